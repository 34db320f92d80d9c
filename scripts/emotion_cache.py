"""Embeddings and layer-5 token states of a labelled TSV file, cached by the file's sha256.

Running MiniLM over the 43k training rows takes minutes on a small CPU; the
cache (under the git-ignored ``artifacts/`` at the repository root) makes
reruns of training and evaluation take seconds. Keyed by the data hash, so an
edited data file is never matched with stale vectors. The token states (what
the emotion head's branched layer reads, float16, about 640 MB for train.tsv)
and the sentence vectors come from the same pass.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from inference.classifiers.dataset import LabelledText, file_sha256  # noqa: E402
from inference.classifiers.head import BRANCH_LAYER  # noqa: E402
from inference.embedder import SentenceEmbedder  # noqa: E402

CACHE_DIR = ROOT / "artifacts" / "emotion-embeddings"


def cached_embeddings(
    path: Path, rows: list[LabelledText], embedder: SentenceEmbedder
) -> npt.NDArray[np.float32]:
    """The embeddings of ``rows`` (read from ``path``), computed once per file content."""
    cache = _vector_cache(path)
    if cache.exists():
        vectors = np.load(cache)
        if vectors.shape[0] == len(rows):
            return np.asarray(vectors, dtype=np.float32)
    start = time.perf_counter()
    print(f"embedding {len(rows)} rows of {path.name} (cached afterwards)...", file=sys.stderr)
    vectors = embedder.encode([row.text for row in rows], batch_size=128)
    print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def _vector_cache(path: Path) -> Path:
    return CACHE_DIR / f"{file_sha256(path)[:32]}.npy"


def cached_token_states(
    path: Path, rows: list[LabelledText], embedder: SentenceEmbedder, layer: int
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.int64]]:
    """MiniLM's token states after transformer layer ``layer`` for every row of ``path``.

    Returned flat: ``states[offsets[i]:offsets[i + 1]]`` are row i's tokens (float16,
    [CLS] ... [SEP], no padding). Training the emotion branch starts from these, so the
    layers below the branch point run once per file, not once per epoch.
    """
    cache = CACHE_DIR / f"{file_sha256(path)[:32]}-layer{layer}.npz"
    if cache.exists():
        with np.load(cache) as data:
            if data["offsets"].shape[0] == len(rows) + 1:
                return data["states"], data["offsets"]
    start = time.perf_counter()
    print(f"token states of {len(rows)} rows of {path.name} (cached)...", file=sys.stderr)
    texts = [row.text for row in rows]
    vectors, per_text = embedder.encode_with_states(texts, layer, batch_size=128)
    offsets = np.cumsum([0] + [len(tokens) for tokens in per_text]).astype(np.int64)
    states = np.concatenate(per_text).astype(np.float16)
    print(f"  {time.perf_counter() - start:.0f} s", file=sys.stderr)
    cache.parent.mkdir(parents=True, exist_ok=True)
    # The same pass gave the sentence vectors (identical to `encode`'s): keep them too.
    np.save(_vector_cache(path), vectors)
    np.savez(cache, states=states, offsets=offsets)
    return states, offsets


if __name__ == "__main__":
    from inference.classifiers.dataset import read_tsv

    model = SentenceEmbedder()
    for name in sys.argv[1:]:
        cached_token_states(Path(name), read_tsv(Path(name)), model, BRANCH_LAYER)
        cached_embeddings(Path(name), read_tsv(Path(name)), model)
