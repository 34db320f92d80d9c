"""A learned query adapter for long-term retrieval: ``q' = unit(q + alpha * (q D) U)``.

Decision (issue 18, docs/memory.md "Fourth round"): **off by default**
(``RetrievalConfig.query_adapter`` is None). The adapter is a low-rank
correction of the query vector only; the memories' stored vectors stay as they
are, so retrieval is still one query and the correction costs one (384 x r)
and one (r x 384) product. It was trained with a contrastive loss on LoCoMo
(question, evidence episode) pairs (``scripts/train_relevance.py``) and
judged by leave-one-conversation-out cross-validation on the five dev
conversations, its rank, regularisation and mixing weight ``alpha`` chosen
inside each training fold. Held out, it moved recall@10 from 0.845 to
0.847-0.848 and multi-hop from 0.574 to 0.580-0.586: within the noise of the
dev set, and the setting the inner folds chose differed from fold to fold. A
learned re-ranker over the top 30 (logistic or listwise, over the
similarities, the text score, ranks, length and word overlap) lost 0.002 to
0.008. MiniLM's geometry, re-weighted, does not hold the missing signal.

Why it is kept as a switch: ``scripts/bench_memory.py --query-adapter FILE``
measures a trained adapter through the real pipeline, and a better training
set (questions and evidence from real users, or many more conversations)
can be tried without touching the read path. What a service would risk by
turning it on: the chat turn retrieves with the user's own message
(``server/turn/gather.py``), mostly first-person statements, while the
adapter learns how a third-person LoCoMo question is worded against its
evidence. On LoCoMo's 1,210 observations used as statement-form queries
(k=5, as the chat turn asks), held-out recall@5 did not drop (0.940 -> 0.941),
and ``alpha`` (0 = off) bounds how far the query can move.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True, eq=False)
class QueryAdapter:
    """A low-rank correction of the query vector; the memories' vectors stay as stored.

    ``down`` is (dimensions, rank), ``up`` (rank, dimensions); ``alpha`` scales
    the correction (0: the query as embedded).
    """

    down: npt.NDArray[np.float32]
    up: npt.NDArray[np.float32]
    alpha: float

    def __post_init__(self) -> None:
        if self.down.ndim != 2 or self.up.shape != self.down.shape[::-1]:
            raise ValueError(f"adapter shapes {self.down.shape} and {self.up.shape} do not match")

    def apply(self, vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The adapted unit query vector (a zero vector stays as it is)."""
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            return vector
        unit = np.asarray(vector, np.float32) / norm
        moved = unit + self.alpha * ((unit @ self.down) @ self.up)
        length = float(np.linalg.norm(moved))
        return (moved / length).astype(np.float32) if length > 0 else unit

    def save(self, path: Path) -> None:
        np.savez(path, down=self.down, up=self.up, alpha=np.float32(self.alpha))

    @classmethod
    def load(cls, path: Path) -> QueryAdapter:
        with np.load(path) as weights:
            return cls(
                down=weights["down"].astype(np.float32),
                up=weights["up"].astype(np.float32),
                alpha=float(weights["alpha"]),
            )
