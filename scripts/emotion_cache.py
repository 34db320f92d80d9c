"""Embeddings of a labelled TSV file, cached on disk by the file's sha256.

Embedding the 43k training rows with MiniLM takes minutes on a small CPU;
the cache (under the git-ignored ``artifacts/`` at the repository root) makes
reruns of training and evaluation take seconds. Keyed by the data hash, so an
edited data file is never matched with stale vectors.
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
from inference.embedder import SentenceEmbedder  # noqa: E402

CACHE_DIR = ROOT / "artifacts" / "emotion-embeddings"


def cached_embeddings(
    path: Path, rows: list[LabelledText], embedder: SentenceEmbedder
) -> npt.NDArray[np.float32]:
    """The embeddings of ``rows`` (read from ``path``), computed once per file content."""
    cache = CACHE_DIR / f"{file_sha256(path)[:32]}.npy"
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


if __name__ == "__main__":
    from inference.classifiers.dataset import read_tsv

    model = SentenceEmbedder()
    for name in sys.argv[1:]:
        cached_embeddings(Path(name), read_tsv(Path(name)), model)
