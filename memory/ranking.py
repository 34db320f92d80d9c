"""Pure ranking for long-term memory retrieval: fusion, re-ranking, token budget.

No I/O here, so the formula can be read (and tested) on its own. The SQL that
produces the candidate lists lives in `memory.retrieval`.

The formula (see docs/memory.md for why):

    semantic(m)  = (sim(m) - min sim) / (max sim - min sim) over the vector
                   candidates, sim = 1 - cosine distance; 0 if not among them
    lexical(m)   = text score(m) / max text score; 0 if not matched
    relevance(m) = vector_weight * semantic(m) + (1 - vector_weight) * lexical(m)
    recency(m)   = 0.5 ** (age_days(m) / recency_half_life_days)  -> (0, 1]
    score(m)     = relevance(m) + importance_weight * importance(m)
                                + recency_weight * recency(m)

Why a convex combination of normalised scores and not reciprocal rank fusion
(which this replaced): RRF keeps only ranks, so a memory that one list ranks
8th with a clear margin loses to one that both lists rank 30th. In a user's
own memories the text list is long and flat (a name or a common word matches
most of them), so "found by both" was nearly free and the real signal, how
far ahead a memory is, was thrown away. On the LoCoMo dev set the switch alone
took recall@10 from 0.777 to 0.82 (docs/memory.md, "Second round"); Bruch et
al. (ACM TOIS 2023, "An Analysis of Fusion Functions for Hybrid Retrieval")
found convex combination ahead of RRF on public benchmarks too. Min-max over
the vector candidates puts cosine on the same [0, 1] scale as the
max-normalised text score, whose natural floor is 0 (no match).

Second hop (pseudo-relevance feedback, Rocchio): the query vector moves to
``unit(query + mean of the top feedback_top memories' vectors)`` and the
candidates' similarities are computed again against it. The best first
matches carry the words the question did not say (a question about "books"
finds the episode that names one title; the moved query then also finds the
episodes about the other titles). Only the candidates already fetched are
re-scored, in memory, so retrieval stays one round trip; see `second_hop`.

Why the best two and not three: the first hop's precision falls steeply with
rank. On the LoCoMo dev set its 1st memory holds an evidence turn for 53% of
the questions, its 2nd for 17%, its 3rd for 9%; a third memory mostly pulls
the query off topic. Two instead of three raised recall@10 in each of the five
dev conversations (0.838 -> 0.845, multi-hop 0.559 -> 0.574; docs/memory.md,
"Third round"). The best one alone gave 0.841: better than two in two
conversations, worse in three; two is the steadier choice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

# About four characters per token for English text with the BPE/WordPiece
# tokenizers the service uses (SmolLM2, MiniLM); rounded up per memory.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class RankingConfig:
    """Weights of the re-ranking formula (module docstring)."""

    vector_weight: float = 0.5  # semantic vs lexical share of relevance
    feedback_top: int = 2  # second hop: memories the query moves towards (0: off)
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


def combine(
    by_vector: Sequence[tuple[int, float]],
    by_text: Sequence[tuple[int, float]],
    vector_weight: float,
) -> dict[int, float]:
    """Relevance in [0, 1] of every candidate from (id, cosine distance) and (id, text score).

    The vector similarities are min-max normalised over their list; the text
    scores are divided by the best one (a score of 0 means no query term).
    """
    relevance = dict.fromkeys([i for i, _ in by_vector] + [i for i, _ in by_text], 0.0)
    if by_vector:
        sims = [1.0 - distance for _, distance in by_vector]
        low, span = min(sims), max(sims) - min(sims)
        for (memory_id, _), sim in zip(by_vector, sims, strict=True):
            semantic = (sim - low) / span if span > 0 else 1.0
            relevance[memory_id] += vector_weight * semantic
    best = max((score for _, score in by_text), default=0.0)
    if best > 0:
        for memory_id, score in by_text:
            relevance[memory_id] += (1.0 - vector_weight) * max(0.0, score) / best
    return relevance


def feedback_query(
    query: npt.NDArray[np.float32], top: Sequence[npt.NDArray[np.float32]]
) -> npt.NDArray[np.float32]:
    """The unit vector of ``query`` plus the mean of ``top`` (unit vectors); query if none."""
    if not top:
        return query
    moved = query + np.mean(np.stack(top), axis=0)
    norm = float(np.linalg.norm(moved))
    return (moved / norm).astype(np.float32) if norm > 0 else query


def second_hop(
    query: npt.NDArray[np.float32],
    ids: Sequence[int],
    vectors: npt.NDArray[np.float32],
    relevance: dict[int, float],
    by_text: Sequence[tuple[int, float]],
    config: RankingConfig,
    limit: int,
) -> dict[int, float]:
    """Relevance again, with the query moved towards the first hop's best memories.

    ``vectors`` holds the candidates' unit vectors, row n for ``ids[n]``; the
    ``limit`` nearest the moved query form the new vector list.
    """
    best = sorted(relevance, key=lambda i: (-relevance[i], -i))[: config.feedback_top]
    row = {memory_id: n for n, memory_id in enumerate(ids)}
    moved = feedback_query(query, [vectors[row[i]] for i in best])
    distances = 1.0 - vectors @ moved
    order = np.lexsort((-np.asarray(ids), distances))[:limit]  # ties: newer first
    by_vector = [(ids[n], float(distances[n])) for n in order]
    return combine(by_vector, by_text, config.vector_weight)


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
