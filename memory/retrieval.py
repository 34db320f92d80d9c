"""The read path of long-term memory: candidate search in PostgreSQL, then the choice.

`LongTermMemory.retrieve` (in `memory.longterm`) runs it; the steps
(docs/memory.md has the full design and the LoCoMo numbers):

1. The query is embedded once (by the store); a learned correction of its
   vector (`memory.relevance`) applies when configured, off by default.
2. Two candidate lists of the user's live (not superseded) memories, in one
   read transaction: vector neighbours by cosine distance (``<=>``) and
   full-text matches (``search @@ term`` per query term, ranked BM25-style by
   the terms' inverse document frequency over the user's own memories).
3. A convex combination of the normalised cosine similarity and text score
   (it replaced reciprocal rank fusion; `memory.ranking` says why); then a
   second hop: the query vector moves towards the best two, and the
   candidates (their vectors came with them) are scored again, in memory;
   then importance and recency.
4. The best ``k`` that fit the token budget (the store counts their access).

Exactness under the shared HNSW index: a filtered HNSW scan can return fewer
than ``k`` rows for a user whose memories are a small part of the index (the
graph walk finds other users' vectors first). For a user with at most
``exact_scan_max`` live memories we therefore never touch the HNSW index: a
materialised CTE takes the user's rows by the btree index and sorts them by
distance, which is exact and cheap at that size. Above it, the HNSW index is
used with pgvector 0.8 iterative scans (``hnsw.iterative_scan =
relaxed_order``), which keep walking the graph until enough rows pass the
filter, and the found rows are re-sorted by exact distance.

ARCHITECTURE: `memory.longterm` keeps the write paths (add, supersede,
delete, erase) and the listings; this module holds the ranking SQL and the
steps that turn its rows into `RetrievedMemory`, so each can be read alone.
It takes a connection, not the pool: the store opens the read transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from memory.ranking import Candidate, RankingConfig, combine, rank, second_hop, within_budget
from memory.relevance import QueryAdapter

Kind = Literal["episodic", "semantic"]


@dataclass(frozen=True, slots=True)
class RetrievalConfig:
    """Knobs of `LongTermMemory.retrieve` (defaults documented in docs/memory.md)."""

    candidates: int = 100  # per list; at least 2 * k
    exact_scan_max: int = 5000  # live memories up to which a user is scanned exactly
    text_scan_max: int = 5000  # ... and up to which text matches skip the GIN index
    ef_search: int = 200  # HNSW search width on the index path
    max_scan_tuples: int = 100_000  # how far an iterative scan may walk
    token_budget: int = 1500
    access_flush_s: float = 1.0  # access statistics are written in batches this often
    ranking: RankingConfig = field(default_factory=RankingConfig)
    # A learned correction of the query vector (memory.relevance); None: the query as embedded.
    query_adapter: QueryAdapter | None = None


class RetrievedMemory(msgspec.Struct, frozen=True, kw_only=True):
    """A memory chosen for a prompt, with the score that chose it."""

    id: int
    content: str
    kind: Kind
    importance: float
    score: float
    source_message_ids: list[int]
    created_at: datetime


# Live memories of one user, optionally of one conversation: $1 user, $3 conversation.
_MINE = "user_id = $1 AND superseded_by IS NULL AND ($3::uuid IS NULL OR conversation_id = $3)"
_FIELDS = ("id", "kind", "content", "importance", "source_message_ids", "created_at")
# Candidates also bring their vectors, for the second hop (memory.ranking).
_CANDIDATE_COLUMNS = ", ".join([*_FIELDS, "embedding"])

# The materialised CTE keeps the planner from pushing ORDER BY distance into the
# HNSW index: the user's rows come from the btree index and are sorted exactly.
_EXACT_VECTOR_SQL = f"""
WITH mine AS MATERIALIZED (
    SELECT {_CANDIDATE_COLUMNS} FROM memories WHERE {_MINE}
)
SELECT {_CANDIDATE_COLUMNS}, embedding <=> $2 AS distance FROM mine
ORDER BY distance, id DESC LIMIT $4
"""
# relaxed_order may return rows slightly out of order; the outer query re-sorts.
_INDEX_VECTOR_SQL = f"""
WITH found AS MATERIALIZED (
    SELECT {_CANDIDATE_COLUMNS}, embedding <=> $2 AS distance FROM memories
    WHERE {_MINE} ORDER BY embedding <=> $2 LIMIT $4
)
SELECT {_CANDIDATE_COLUMNS}, distance FROM found ORDER BY distance, id DESC
"""
# BM25-style text candidates: each of the user's live memories scored by the
# query terms it holds, a term weighted by its inverse document frequency over
# this user's own memories (a name found in half of them counts for little, a
# rare word for a lot). Binary term frequency: episodes are short and of bounded
# size, so term counts and length normalisation add little. Each stemmed
# lexeme is quoted by hand so that the cast to tsquery does not stem it again.
#
# Every (memory, term) match is found once (``hits``); document frequencies and
# scores are both counted from it. How the matches are found depends on the
# user's size (see `_text_sql`): a user with few memories has them read once
# through the btree index and matched in memory, never touching the GIN index,
# whose posting list for a common word spans every user's memories; a user
# with many memories is matched through the GIN index.
_TEXT_TEMPLATE = rf"""
WITH terms AS MATERIALIZED (
    SELECT DISTINCT lexeme,
        ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery AS term
    FROM unnest(tsvector_to_array(to_tsvector('english', $2))) AS lexeme
), live AS MATERIALIZED (
    SELECT count(*) AS n FROM memories WHERE {_MINE}
), hits AS MATERIALIZED (
    {{hits}}
), weighted AS (
    SELECT lexeme, ln(1 + ((SELECT n FROM live) - count(*) + 0.5) / (count(*) + 0.5)) AS idf
    FROM hits GROUP BY lexeme
), scored AS (
    SELECT h.id, sum(w.idf) AS score FROM hits AS h JOIN weighted AS w USING (lexeme)
    GROUP BY h.id ORDER BY score DESC, h.id DESC LIMIT $4
)
SELECT {_CANDIDATE_COLUMNS}, score FROM scored JOIN memories USING (id)
ORDER BY score DESC, id DESC
"""
# The user's rows through the btree index, each matched against every term.
_SCAN_HITS = f"""SELECT m.id, t.lexeme
    FROM (SELECT id, search FROM memories WHERE {_MINE} OFFSET 0) AS m
    JOIN terms AS t ON m.search @@ t.term"""
# Each term's matches through the GIN index, filtered to the user's rows.
_INDEX_HITS = f"""SELECT id, t.lexeme FROM terms AS t JOIN memories ON search @@ t.term
    WHERE {_MINE}"""
_TEXT_SCAN_SQL = _TEXT_TEMPLATE.format(hits=_SCAN_HITS)
_TEXT_INDEX_SQL = _TEXT_TEMPLATE.format(hits=_INDEX_HITS)
_COUNT_SQL = f"SELECT count(*) FROM (SELECT 1 FROM memories WHERE {_MINE} LIMIT $2 + 1) AS s"

_Rows = list[Any]


@dataclass(frozen=True, slots=True)
class Query:
    """One retrieval: whose memories (optionally one conversation's), for what."""

    user_id: uuid.UUID
    text: str
    vector: npt.NDArray[np.float32]
    conversation_id: uuid.UUID | None = None


async def find_candidates(
    conn: asyncpg.Connection, config: RetrievalConfig, query: Query, limit: int
) -> tuple[_Rows, _Rows]:
    """The vector and the text candidate lists, up to ``limit`` each, best first.

    Call inside one read transaction: both lists then see the same memories.
    """
    live = await count_live(conn, config, query.user_id, query.conversation_id)
    by_vector = await vector_candidates(
        conn, config, query.user_id, query.vector, query.conversation_id, limit, live
    )
    text_sql = _TEXT_SCAN_SQL if live <= config.text_scan_max else _TEXT_INDEX_SQL
    by_text = await conn.fetch(text_sql, query.user_id, query.text, query.conversation_id, limit)
    return by_vector, list(by_text)


async def count_live(
    conn: asyncpg.Connection,
    config: RetrievalConfig,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID | None,
) -> int:
    """The user's live memories, counted only up to the larger scan threshold (plus one)."""
    bound = max(config.exact_scan_max, config.text_scan_max)
    return int(await conn.fetchval(_COUNT_SQL, user_id, bound, conversation_id))


async def vector_candidates(
    conn: asyncpg.Connection,
    config: RetrievalConfig,
    user_id: uuid.UUID,
    vector: npt.NDArray[np.float32],
    conversation_id: uuid.UUID | None,
    limit: int,
    live: int | None = None,
) -> _Rows:
    """Nearest live memories of the user: exact scan when few, else iterative HNSW."""
    if live is None:
        live = await count_live(conn, config, user_id, conversation_id)
    if live <= config.exact_scan_max:
        exact = await conn.fetch(_EXACT_VECTOR_SQL, user_id, vector, conversation_id, limit)
        return list(exact)
    # SET LOCAL equivalents: they end with this transaction.
    await conn.execute(
        "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
        "set_config('hnsw.ef_search', $1, true), set_config('hnsw.max_scan_tuples', $2, true)",
        str(max(config.ef_search, limit)),
        str(config.max_scan_tuples),
    )
    return list(await conn.fetch(_INDEX_VECTOR_SQL, user_id, vector, conversation_id, limit))


def choose(
    by_vector: _Rows,
    by_text: _Rows,
    ranking: RankingConfig,
    k: int,
    token_budget: int,
    now: datetime,
    query: npt.NDArray[np.float32] | None = None,
) -> list[RetrievedMemory]:
    """Combine the two lists, re-rank, and keep the best ``k`` within ``token_budget``.

    Vector rows carry their cosine ``distance``, text rows their ``score``,
    both their ``embedding``. With the ``query`` vector and
    ``ranking.feedback_top`` > 0, relevance comes from the second hop.
    """
    rows = {row["id"]: row for row in [*by_vector, *by_text]}
    text = [(r["id"], float(r["score"])) for r in by_text]
    relevance = combine(
        [(r["id"], float(r["distance"])) for r in by_vector], text, ranking.vector_weight
    )
    if query is not None and ranking.feedback_top > 0 and rows:
        ids = list(rows)
        vectors = _units(np.stack([_array(rows[i]["embedding"]) for i in ids]))
        limit = max(len(by_vector), 1)
        relevance = second_hop(_units(_array(query)), ids, vectors, relevance, text, ranking, limit)
    ranked = rank({i: _candidate(r) for i, r in rows.items()}, relevance, now, ranking)
    return [_retrieved(rows[c.id], score) for c, score in within_budget(ranked, k, token_budget)]


def _array(vector: Any) -> npt.NDArray[np.float32]:
    """A float32 array from a pgvector ``Vector`` or an array."""
    return np.asarray(vector.to_numpy() if hasattr(vector, "to_numpy") else vector, np.float32)


def _units(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Vectors scaled to unit length along their last axis (zero vectors stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    units: npt.NDArray[np.float32] = np.divide(
        vectors, norms, out=np.zeros_like(vectors), where=norms > 0
    )
    return units


def _candidate(row: Any) -> Candidate:
    return Candidate(
        id=row["id"],
        importance=float(row["importance"]),
        created_at=row["created_at"],
        content=row["content"],
    )


def _retrieved(row: Any, score: float) -> RetrievedMemory:
    # The candidate columns are the fields, but the list's own distance or text score.
    fields = {name: row[name] for name in _FIELDS}
    return RetrievedMemory(**fields, score=score)
