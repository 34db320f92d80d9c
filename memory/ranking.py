"""Pure ranking for long-term memory retrieval: fusion, re-ranking, token budget.

No I/O here, so the formula can be read (and tested) on its own. The SQL that
produces the candidate lists lives in `memory.retrieval`.

The formula (see docs/memory.md for why):

    relevance(m) = sum over lists L containing m of 1 / (rrf_k + rank_L(m))
                   divided by its maximum, 2 / (rrf_k + 1)       -> (0, 1]
    recency(m)   = 0.5 ** (age_days(m) / recency_half_life_days)  -> (0, 1]
    score(m)     = relevance(m) + importance_weight * importance(m)
                                + recency_weight * recency(m)

Reciprocal rank fusion (Cormack et al., SIGIR 2009) needs no score
calibration between cosine distances and text scores, which live on
unrelated scales; a memory found by both lists beats one found by either.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

# About four characters per token for English text with the BPE/WordPiece
# tokenizers the service uses (SmolLM2, MiniLM); rounded up per memory.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class RankingConfig:
    """Weights of the re-ranking formula (module docstring)."""

    rrf_k: int = 60
    importance_weight: float = 0.1
    recency_weight: float = 0.05
    recency_half_life_days: float = 30.0


@dataclass(frozen=True, slots=True)
class Candidate:
    """One memory as a candidate list returned it (rank 1 is best)."""

    id: int
    importance: float
    created_at: datetime
    content: str


def estimate_tokens(text: str) -> int:
    """Approximate prompt tokens of ``text`` (chars / 4, rounded up, at least 1)."""
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def fuse(lists: Iterable[Sequence[int]], rrf_k: int) -> dict[int, float]:
    """Reciprocal rank fusion of ranked id lists, normalised so that 1.0 = top of two lists."""
    scores: dict[int, float] = {}
    for ranked in lists:
        for rank, memory_id in enumerate(ranked, start=1):
            scores[memory_id] = scores.get(memory_id, 0.0) + 1.0 / (rrf_k + rank)
    top = 2.0 / (rrf_k + 1)
    return {memory_id: score / top for memory_id, score in scores.items()}


def recency(created_at: datetime, now: datetime, half_life_days: float) -> float:
    """Exponential decay by age; a memory from the future counts as new."""
    age_days = max(0.0, (now - created_at).total_seconds() / 86400.0)
    return float(0.5 ** (age_days / half_life_days))


def rank(
    candidates: dict[int, Candidate],
    relevance: dict[int, float],
    now: datetime,
    config: RankingConfig,
) -> list[tuple[Candidate, float]]:
    """Candidates with their final score, best first (ties: newer id first)."""
    scored = []
    for memory_id, rel in relevance.items():
        candidate = candidates[memory_id]
        score = (
            rel
            + config.importance_weight * candidate.importance
            + config.recency_weight
            * recency(candidate.created_at, now, config.recency_half_life_days)
        )
        scored.append((candidate, score))
    scored.sort(key=lambda item: (-item[1], -item[0].id))
    return scored


def within_budget(
    ranked: Sequence[tuple[Candidate, float]], k: int, token_budget: int
) -> list[tuple[Candidate, float]]:
    """The best ``k`` that fit in ``token_budget`` tokens together.

    A memory too large for what is left is skipped, not a reason to stop: a
    smaller, slightly less relevant memory still makes a better prompt than
    unused budget.
    """
    chosen: list[tuple[Candidate, float]] = []
    left = token_budget
    for candidate, score in ranked:
        if len(chosen) == k:
            break
        cost = estimate_tokens(candidate.content)
        if cost <= left:
            chosen.append((candidate, score))
            left -= cost
    return chosen
