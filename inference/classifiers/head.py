"""Layer 2 of the emotion classifier: a fine-tuned copy of MiniLM's last layer.

Decision: the head branches off the embedding pass the service already pays
for. MiniLM's first five layers run once per message (the embedder's ONNX
graph returns their output as an extra output, next to the unchanged
sentence vector used for retrieval); the head then runs its own copy of
layer 6, fine-tuned on GoEmotions-Ekman, mean-pools its tokens and maps them
to the seven labels, plus a hashed word uni/bigram table and a per-class
calibration bias.

Why this rather than the alternatives:

- The previous head (an MLP on the frozen, mean-pooled, normalised sentence
  vector) stopped at dev macro-F1 0.598: pooling the frozen last layer throws
  away what a classifier needs (which tokens carry the feeling).
- Fine-tuning the shared embedder would move the retrieval vectors of every
  stored memory; a second full fine-tuned MiniLM would double the per-message
  cost. One branched layer costs about a sixth of a MiniLM pass, leaves the
  retrieval vector bit-identical, and is what training on two CPU cores can
  afford (the five frozen layers' outputs are cached once; each epoch then
  runs one layer forward and backward).
- The n-gram table (fastText-style, crc32-hashed: Python salts `hash()`)
  still adds lexical cues cheaply ("lol", "thanks", swearing); the bias
  shifts decisions toward rare classes (disgust, fear) to maximise macro-F1.

The layer is written out here (`BranchLayer`, post-LN BERT) so that
training (scripts/train_emotion.py) and serving run the same code; torch is
already a run-time dependency of the embedder. Weights are stored as float16
(models/artifacts/emotion/head.npz, about 4 MB) and run as float32.
"""

from __future__ import annotations

import re
import tempfile
import warnings
import zlib
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional

from inference.classifiers.dataset import EMOTION_LABELS

Floats = npt.NDArray[np.float32]

BRANCH_LAYER = 5  # the head starts from the output of this MiniLM layer (of 6)
ARTIFACT_DIR = Path(__file__).resolve().parent.parent.parent / "models" / "artifacts" / "emotion"
WEIGHTS_FILE = "head.npz"
METADATA_FILE = "metadata.json"
HIDDEN = 384
HEADS = 12
INTERMEDIATE = 1536

_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']", re.IGNORECASE)
_SMALL = ("bias", "weight_norm")  # parameters kept in float32 in the artifact


def ngram_buckets(text: str, buckets: int) -> list[int]:
    """Distinct hash buckets of the lower-cased word unigrams and bigrams of ``text``."""
    tokens = [token.lower() for token in _TOKEN.findall(text)]
    grams = tokens + [f"{a} {b}" for a, b in pairwise(tokens)]
    return sorted({zlib.crc32(gram.encode("utf-8")) % buckets for gram in grams})


def softmax(logits: Floats) -> Floats:
    """Row-wise softmax, stable for large logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


class BranchLayer(torch.nn.Module):
    """One BERT encoder layer (self-attention and feed-forward, each followed by LayerNorm)."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.qkv = torch.nn.Linear(HIDDEN, 3 * HIDDEN)
        self.attention_out = torch.nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = torch.nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up = torch.nn.Linear(HIDDEN, INTERMEDIATE)
        self.down = torch.nn.Linear(INTERMEDIATE, HIDDEN)
        self.out_norm = torch.nn.LayerNorm(HIDDEN, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, tokens, 384]; ``mask`` [batch, tokens], True on real tokens."""
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        context = functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask[:, None, None, :], dropout_p=p
        )
        context = context.transpose(1, 2).reshape(batch, tokens, HIDDEN)
        x = self.attention_norm(x + functional.dropout(self.attention_out(context), p))
        y = self.down(functional.gelu(self.up(x)))
        out: torch.Tensor = self.out_norm(x + functional.dropout(y, p))
        return out

    @classmethod
    def from_bert(cls, layer: Any, dropout: float = 0.1) -> BranchLayer:
        """A copy of a Hugging Face ``BertLayer``'s weights (the starting point of training)."""
        branch = cls(dropout)
        attention = layer.attention
        with torch.no_grad():
            parts = (attention.self.query, attention.self.key, attention.self.value)
            branch.qkv.weight.copy_(torch.cat([m.weight for m in parts]))
            branch.qkv.bias.copy_(torch.cat([m.bias for m in parts]))
            pairs = [
                (branch.attention_out, attention.output.dense),
                (branch.attention_norm, attention.output.LayerNorm),
                (branch.up, layer.intermediate.dense),
                (branch.down, layer.output.dense),
                (branch.out_norm, layer.output.LayerNorm),
            ]
            for mine, theirs in pairs:
                mine.load_state_dict(theirs.state_dict())
        return branch


class EmotionNet(torch.nn.Module):
    """Branch layer -> masked mean pooling -> linear, plus the n-gram table and the bias."""

    def __init__(self, buckets: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layer = BranchLayer(dropout)
        self.pool_dropout = torch.nn.Dropout(dropout)
        self.classifier = torch.nn.Linear(HIDDEN, len(EMOTION_LABELS))
        self.ngrams = torch.nn.EmbeddingBag(buckets, len(EMOTION_LABELS), mode="sum")
        torch.nn.init.zeros_(self.ngrams.weight)
        self.register_buffer("calibration", torch.zeros(len(EMOTION_LABELS)))

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor, grams: torch.Tensor, offsets: torch.Tensor
    ) -> torch.Tensor:
        logits: torch.Tensor = self.dense(states, mask) + self.ngrams(grams, offsets)
        return logits

    def dense(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Everything but the n-gram table: what ONNX Runtime runs in the service."""
        hidden = self.layer(states, mask)
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        logits: torch.Tensor = self.classifier(self.pool_dropout(pooled)) + self.calibration
        return logits


def pad(states: Sequence[npt.NDArray[Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-text token states -> a zero-padded float32 batch and its token mask."""
    longest = max(len(s) for s in states)
    batch = torch.zeros(len(states), longest, HIDDEN)
    mask = torch.zeros(len(states), longest, dtype=torch.bool)
    for i, s in enumerate(states):
        batch[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
        mask[i, : len(s)] = True
    return batch, mask


def bags(texts: Sequence[str], buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts' n-gram buckets as `EmbeddingBag` input (flat indices, offsets)."""
    rows = [ngram_buckets(text, buckets) for text in texts]
    flat = torch.tensor([i for row in rows for i in row], dtype=torch.long)
    offsets = torch.tensor(np.cumsum([0] + [len(r) for r in rows[:-1]]), dtype=torch.long)
    return flat, offsets


class EmotionHead:
    """The trained head; `probabilities` maps layer-5 token states + texts to label scores.

    Served on ONNX Runtime with its own intra-op thread count (default 1), exported
    from ``net`` on first use: torch's thread count is process-wide, and on a busy
    2-core machine torch's two OpenMP threads made one message's head 20x slower
    than one thread (67 vs 3.4 ms mean; ONNX Runtime on one thread: see
    docs/understanding.md). The n-gram table is a numpy gather. Falls back to torch
    when onnxruntime is not installed.
    """

    def __init__(self, net: EmotionNet, threads: int = 1) -> None:
        self.net = net.eval()
        self.threads = threads
        self._ngrams = net.ngrams.weight.detach().numpy().astype(np.float32)
        self._session: Any = None

    @classmethod
    def load(cls, directory: Path = ARTIFACT_DIR) -> EmotionHead:
        """Read ``head.npz`` from ``directory`` (about 4 MB; milliseconds)."""
        path = directory / WEIGHTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"no emotion head at {path} (run scripts/train_emotion.py)")
        with np.load(path) as data:
            state = {name: torch.from_numpy(data[name].astype(np.float32)) for name in data.files}
        outputs = state["classifier.weight"].shape[0]
        if outputs != len(EMOTION_LABELS):
            raise ValueError(f"{path}: head has {outputs} outputs, expected 7")
        net = EmotionNet(buckets=int(state["ngrams.weight"].shape[0]))
        net.load_state_dict(state)
        return cls(net)

    def save(self, directory: Path) -> None:
        """Write the weights: matrices as float16 (halves the file, no F1 change)."""
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for name, tensor in self.net.state_dict().items():
            small = tensor.ndim < 2 or name.endswith(_SMALL)
            arrays[name] = tensor.numpy().astype(np.float32 if small else np.float16)
        np.savez_compressed(directory / WEIGHTS_FILE, **arrays)

    @property
    def buckets(self) -> int:
        return int(self.net.ngrams.weight.shape[0])

    @property
    def bias(self) -> Floats:
        """The per-class calibration bias, chosen on dev."""
        calibration: torch.Tensor = self.net.calibration  # type: ignore[assignment]
        return np.asarray(calibration.numpy(), dtype=np.float32)

    def logits(self, states: Sequence[npt.NDArray[Any]], texts: Sequence[str]) -> Floats:
        """Calibrated logits, one row per text; ``states`` from `BRANCH_LAYER`, per text."""
        if len(states) != len(texts):
            raise ValueError("one token-state array per text expected")
        if not texts:
            return np.zeros((0, len(EMOTION_LABELS)), dtype=np.float32)
        batch, mask = pad(states)
        session = self._scorer()
        if session is None:
            with torch.inference_mode():
                out = self.net(batch, mask, *bags(texts, self.buckets))
            return np.asarray(out.numpy(), dtype=np.float32)
        (dense,) = session.run(None, {"states": batch.numpy(), "mask": mask.numpy()})
        lexical = np.stack([self._ngram_logits(text) for text in texts])
        return np.asarray(dense + lexical, dtype=np.float32)

    def probabilities(self, states: Sequence[npt.NDArray[Any]], texts: Sequence[str]) -> Floats:
        """Label probabilities [n, 7] in `EMOTION_LABELS` order."""
        return softmax(self.logits(states, texts))

    def _ngram_logits(self, text: str) -> Floats:
        rows = ngram_buckets(text, self.buckets)
        if not rows:
            return np.zeros(len(EMOTION_LABELS), dtype=np.float32)
        return np.asarray(self._ngrams[rows].sum(axis=0), dtype=np.float32)

    def _scorer(self) -> Any:
        if self._session is None:
            try:
                self._session = _onnx_session(self.net, self.threads)
            except ImportError:
                self._session = False  # no onnxruntime: torch it is, for good
        return self._session or None


def _onnx_session(net: EmotionNet, threads: int) -> Any:
    import onnxruntime as ort

    class _Dense(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.net.dense(states, mask)

    # Two lengths, so that the traced graph applies the mask.
    sample = pad([np.zeros((3, HIDDEN), np.float32), np.zeros((5, HIDDEN), np.float32)])
    axes = {name: {0: "batch", 1: "tokens"} for name in ("states", "mask")}
    with tempfile.TemporaryDirectory(prefix="companion-emotion-") as tmp:
        path = Path(tmp) / "head.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on fixed shapes: expected
            torch.onnx.export(
                _Dense().eval(),
                sample,
                path,
                input_names=["states", "mask"],
                output_names=["logits"],
                dynamic_axes=axes | {"logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        model = path.read_bytes()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
