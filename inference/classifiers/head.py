"""Layer 2 of the emotion classifier: a small trained head, numpy only at run time.

logits = MLP(sentence embedding) + sum of weights of the text's hashed word
uni/bigrams + a calibration bias. The MLP reads meaning from the MiniLM
embedding; the hashed n-gram table (a fastText-style linear term) adds the
lexical cues MiniLM's mean pooling blurs ("lol", "thanks", swear words),
which lifts dev macro-F1 by about six points. The bias is chosen on dev
to maximise macro-F1: it shifts the decision towards rare classes
(disgust, fear) that the arg-max of a frequency-skewed model under-predicts.

scripts/train_emotion.py writes the artifact; this module reads it and must
hash text exactly as the training did (`ngram_buckets`).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inference.classifiers.dataset import EMOTION_LABELS

Floats = npt.NDArray[np.float32]

ARTIFACT_DIR = Path(__file__).resolve().parent.parent.parent / "models" / "artifacts" / "emotion"
WEIGHTS_FILE = "head.npz"
METADATA_FILE = "metadata.json"

_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']", re.IGNORECASE)


def ngram_buckets(text: str, buckets: int) -> list[int]:
    """Distinct hash buckets of the lower-cased word unigrams and bigrams of ``text``.

    crc32 rather than `hash()`: Python salts str hashes per process, and the
    buckets must match the ones the head was trained with.
    """
    tokens = [token.lower() for token in _TOKEN.findall(text)]
    grams = tokens + [f"{a} {b}" for a, b in pairwise(tokens)]
    return sorted({zlib.crc32(gram.encode("utf-8")) % buckets for gram in grams})


def softmax(logits: Floats) -> Floats:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


def gelu(x: Floats) -> Floats:
    """tanh-approximated GELU, the activation the head was trained with."""
    inner = 0.7978845608 * (x + 0.044715 * x**3)
    return np.asarray(0.5 * x * (1.0 + np.tanh(inner)), dtype=np.float32)


@dataclass(frozen=True, slots=True)
class EmotionHead:
    """The trained weights; `probabilities` maps embeddings + texts to label scores."""

    w1: Floats  # [384, hidden]
    b1: Floats  # [hidden]
    w2: Floats  # [hidden, 7]
    b2: Floats  # [7]
    ngrams: Floats  # [buckets, 7]
    bias: Floats  # [7], calibration chosen on dev

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> EmotionHead:
        """Read ``head.npz`` from ``directory`` (about a megabyte; milliseconds)."""
        path = directory / WEIGHTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no emotion head at {path} (run scripts/train_emotion.py)")
        with np.load(path) as data:
            arrays = {name: np.asarray(data[name], dtype=np.float32) for name in data.files}
        head = cls(**arrays)
        if head.w2.shape[1] != len(EMOTION_LABELS):
            raise ValueError(f"{path}: head has {head.w2.shape[1]} outputs, expected 7")
        return head

    def save(self, directory: Path) -> None:
        """Write the weights (n-gram table as float16: halves the file, no F1 change)."""
        directory.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            directory / WEIGHTS_FILE,
            w1=self.w1,
            b1=self.b1,
            w2=self.w2,
            b2=self.b2,
            ngrams=self.ngrams.astype(np.float16),
            bias=self.bias,
        )

    @property
    def buckets(self) -> int:
        return int(self.ngrams.shape[0])

    def logits(self, vectors: Floats, texts: Sequence[str]) -> Floats:
        """Calibrated logits, one row per text."""
        if vectors.shape[0] != len(texts):
            raise ValueError("one embedding per text expected")
        hidden = gelu(vectors @ self.w1 + self.b1)
        lexical = np.stack([self._ngram_logits(text) for text in texts]) if texts else 0.0
        return np.asarray(hidden @ self.w2 + self.b2 + lexical + self.bias, dtype=np.float32)

    def probabilities(self, vectors: Floats, texts: Sequence[str]) -> Floats:
        """Label probabilities [n, 7] in `EMOTION_LABELS` order."""
        return softmax(self.logits(vectors, texts))

    def _ngram_logits(self, text: str) -> Floats:
        rows = ngram_buckets(text, self.buckets)
        if not rows:
            return np.zeros(len(EMOTION_LABELS), dtype=np.float32)
        return np.asarray(self.ngrams[rows].sum(axis=0), dtype=np.float32)
