"""Long-term memory in PostgreSQL + pgvector: store, supersede, hybrid retrieval, erase.

Retrieval (docs/memory.md has the full design and the LoCoMo numbers):

1. The query is embedded once.
2. Two candidate lists of the user's live (not superseded) memories, in one
   read transaction: vector neighbours by cosine distance (``<=>``) and
   full-text matches (``search @@ term`` per query term, ranked BM25-style by
   the terms' inverse document frequency over the user's own memories).
3. Reciprocal rank fusion, then importance and recency (`memory.ranking`).
4. The best ``k`` that fit the token budget; their access stats are counted
   and written in batches off the read path (`memory.access`).

Exactness under the shared HNSW index: a filtered HNSW scan can return fewer
than ``k`` rows for a user whose memories are a small part of the index (the
graph walk finds other users' vectors first). For a user with at most
``exact_scan_max`` live memories we therefore never touch the HNSW index: a
materialised CTE takes the user's rows by the btree index and sorts them by
distance, which is exact and cheap at that size. Above it, the HNSW index is
used with pgvector 0.8 iterative scans (``hnsw.iterative_scan =
relaxed_order``), which keep walking the graph until enough rows pass the
filter, and the found rows are re-sorted by exact distance.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from memory.access import AccessStats
from memory.errors import MemoryTierError
from memory.metrics import default_memory_metrics
from memory.protocols import Embedder
from memory.ranking import Candidate, RankingConfig, fuse, rank, within_budget

Kind = Literal["episodic", "semantic"]
KINDS: frozenset[str] = frozenset({"episodic", "semantic"})
DIMENSIONS = 384  # memories.embedding is vector(384)


class LongTermMemoryError(MemoryTierError):
    """Base of the errors of the long-term memory store."""


class InvalidMemory(LongTermMemoryError):
    """A memory was rejected before it reached the database (kind, importance, content)."""


class MemoryNotFound(LongTermMemoryError):
    """No such memory for this user (or it belongs to someone else)."""


class AlreadySuperseded(LongTermMemoryError):
    """Only the current version of a fact can be superseded."""


class EmbeddingFailed(LongTermMemoryError):
    """The embedder raised or returned vectors of the wrong shape."""


class Memory(msgspec.Struct, frozen=True, kw_only=True):
    """A stored memory as listed and exported (without its embedding)."""

    id: int
    user_id: uuid.UUID
    conversation_id: uuid.UUID | None
    kind: Kind
    content: str
    importance: float
    source_message_ids: list[int]
    superseded_by: int | None
    access_count: int
    created_at: datetime
    last_accessed_at: datetime | None


class RetrievedMemory(msgspec.Struct, frozen=True, kw_only=True):
    """A memory chosen for a prompt, with the score that chose it."""

    id: int
    content: str
    kind: Kind
    importance: float
    score: float
    source_message_ids: list[int]
    created_at: datetime


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


# Live memories of one user, optionally of one conversation: $1 user, $3 conversation.
_MINE = "user_id = $1 AND superseded_by IS NULL AND ($3::uuid IS NULL OR conversation_id = $3)"
_CANDIDATE_COLUMNS = "id, kind, content, importance, source_message_ids, created_at"
_MEMORY_COLUMNS = (
    "id, user_id, conversation_id, kind, content, importance, source_message_ids, "
    "superseded_by, access_count, created_at, last_accessed_at"
)

# The materialised CTE keeps the planner from pushing ORDER BY distance into the
# HNSW index: the user's rows come from the btree index and are sorted exactly.
_EXACT_VECTOR_SQL = f"""
WITH mine AS MATERIALIZED (
    SELECT {_CANDIDATE_COLUMNS}, embedding FROM memories WHERE {_MINE}
)
SELECT {_CANDIDATE_COLUMNS} FROM mine ORDER BY embedding <=> $2, id DESC LIMIT $4
"""
# relaxed_order may return rows slightly out of order; the outer query re-sorts.
_INDEX_VECTOR_SQL = f"""
WITH found AS MATERIALIZED (
    SELECT {_CANDIDATE_COLUMNS}, embedding <=> $2 AS distance FROM memories
    WHERE {_MINE} ORDER BY embedding <=> $2 LIMIT $4
)
SELECT {_CANDIDATE_COLUMNS} FROM found ORDER BY distance, id DESC
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
SELECT {_CANDIDATE_COLUMNS} FROM scored JOIN memories USING (id) ORDER BY score DESC, id DESC
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
_SEARCH_SQL = f"""
SELECT {_MEMORY_COLUMNS} FROM memories, websearch_to_tsquery('english', $2) AS q(query)
WHERE user_id = $1 AND superseded_by IS NULL AND search @@ q.query
ORDER BY ts_rank_cd(search, q.query) DESC, id DESC LIMIT $3
"""
# The conversation, when given, must be the user's own.
_INSERT_SQL = """
INSERT INTO memories (user_id, conversation_id, kind, content, embedding, importance,
                      source_message_ids, created_at)
SELECT $1, $2, $3, $4, $5, $6, $7, coalesce($8, now())
WHERE $2::uuid IS NULL OR EXISTS (SELECT 1 FROM conversations WHERE id = $2 AND user_id = $1)
RETURNING id
"""
# A fact and every older version of it (the versions it superseded, transitively).
_DELETE_SQL = """
WITH RECURSIVE chain AS (
    SELECT id FROM memories WHERE id = $2 AND user_id = $1
    UNION
    SELECT m.id FROM memories m JOIN chain c ON m.superseded_by = c.id WHERE m.user_id = $1
)
DELETE FROM memories WHERE id IN (SELECT id FROM chain) RETURNING id
"""

_Memories = list[Memory]  # aliases: inside the class, `list` is the method
_Retrieved = list[RetrievedMemory]
_Rows = list[Any]


class LongTermMemory:
    """A user's long-term memories: add, supersede, retrieve, list, search, delete, erase.

    Every method takes the ``user_id`` and touches only that user's rows.
    """

    def __init__(
        self, pool: asyncpg.Pool, embedder: Embedder, config: RetrievalConfig | None = None
    ) -> None:
        self._pool = pool
        self._embedder = embedder
        self.config = config or RetrievalConfig()
        self._access = AccessStats(pool, self.config.access_flush_s)

    async def add(
        self,
        user_id: uuid.UUID,
        kind: Kind,
        content: str,
        importance: float,
        source_message_ids: Sequence[int],
        conversation_id: uuid.UUID | None = None,
        embedding: npt.NDArray[np.float32] | None = None,
        occurred_at: datetime | None = None,
    ) -> int:
        """Store a memory and return its id. ``occurred_at`` defaults to now."""
        _validate(kind, content, importance)
        vector = await self._vector(content, embedding)
        async with self._pool.acquire() as conn:
            return await _insert(
                conn,
                (user_id, conversation_id, kind, content, vector, importance),
                source_message_ids,
                occurred_at,
            )

    async def supersede(
        self,
        user_id: uuid.UUID,
        old_id: int,
        content: str,
        importance: float | None = None,
        source_message_ids: Sequence[int] = (),
        embedding: npt.NDArray[np.float32] | None = None,
    ) -> int:
        """Store ``content`` as the new version of memory ``old_id``; return the new id.

        The new memory keeps the old one's kind and conversation (and importance
        unless given); the old one points at it and leaves retrieval for good.
        """
        vector = await self._vector(content, embedding)  # before taking a connection
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT kind, conversation_id, importance, superseded_by FROM memories "
                "WHERE id = $1 AND user_id = $2 FOR UPDATE",
                old_id,
                user_id,
            )
            if old is None:
                raise MemoryNotFound(f"memory {old_id} not found")
            if old["superseded_by"] is not None:
                raise AlreadySuperseded(f"memory {old_id} was superseded by {old['superseded_by']}")
            weight = old["importance"] if importance is None else importance
            _validate(old["kind"], content, weight)
            row = (user_id, old["conversation_id"], old["kind"], content, vector, weight)
            new_id = await _insert(conn, row, source_message_ids, None)
            await conn.execute(
                "UPDATE memories SET superseded_by = $1 WHERE id = $2", new_id, old_id
            )
            return new_id

    async def retrieve(
        self,
        user_id: uuid.UUID,
        query: str,
        k: int = 10,
        token_budget: int | None = None,
        conversation_id: uuid.UUID | None = None,
        now: datetime | None = None,
    ) -> _Retrieved:
        """The user's ``k`` most useful memories for ``query`` within ``token_budget`` tokens."""
        if k <= 0 or not query.strip():
            return []
        started = time.perf_counter()
        vector = await self._vector(query, None)
        budget = self.config.token_budget if token_budget is None else token_budget
        limit = max(self.config.candidates, 2 * k)
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            live = await self._count(conn, user_id, conversation_id)
            by_vector = await self._vector_candidates(
                conn, user_id, vector, conversation_id, limit, live
            )
            text_sql = _TEXT_SCAN_SQL if live <= self.config.text_scan_max else _TEXT_INDEX_SQL
            by_text = await conn.fetch(text_sql, user_id, query, conversation_id, limit)
        rows = {row["id"]: row for row in [*by_vector, *by_text]}
        relevance = fuse(
            [[r["id"] for r in by_vector], [r["id"] for r in by_text]],
            self.config.ranking.rrf_k,
        )
        ranked = rank(
            {i: _candidate(r) for i, r in rows.items()},
            relevance,
            now or datetime.now(UTC),
            self.config.ranking,
        )
        chosen = within_budget(ranked, k, budget)
        self._access.record([c.id for c, _ in chosen])
        default_memory_metrics().retrieval.observe(time.perf_counter() - started)
        return [_retrieved(rows[c.id], score) for c, score in chosen]

    async def flush_access(self) -> None:
        """Write the access statistics of past retrievals now (they are batched)."""
        await self._access.flush()

    async def close(self) -> None:
        """Write what is pending; call at shutdown, before the pool closes."""
        await self._access.close()

    async def list(
        self,
        user_id: uuid.UUID,
        kind: Kind | None = None,
        include_superseded: bool = False,
        limit: int = 100,
        before_id: int | None = None,
    ) -> _Memories:
        """The user's memories, newest first; page with ``before_id`` = the last id seen."""
        rows = await self._pool.fetch(
            f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE user_id = $1 "
            "AND ($2::text IS NULL OR kind = $2) AND ($3 OR superseded_by IS NULL) "
            "AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $5",
            user_id,
            kind,
            include_superseded,
            before_id,
            limit,
        )
        return [_memory(row) for row in rows]

    async def search(self, user_id: uuid.UUID, text: str, limit: int = 20) -> _Memories:
        """Full-text search of current memories (web-search syntax: "a phrase", -not, or)."""
        rows = await self._pool.fetch(_SEARCH_SQL, user_id, text, limit)
        return [_memory(row) for row in rows]

    async def delete(self, user_id: uuid.UUID, memory_id: int) -> bool:
        """Forget a memory and the older versions it superseded; False if not the user's."""
        rows = await self._pool.fetch(_DELETE_SQL, user_id, memory_id)
        return bool(rows)

    async def export(self, user_id: uuid.UUID) -> _Memories:
        """Everything stored about the user, superseded versions included, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE user_id = $1 ORDER BY id", user_id
        )
        return [_memory(row) for row in rows]

    async def erase(self, user_id: uuid.UUID) -> int:
        """Delete every memory of the user; return how many there were."""
        status = await self._pool.execute("DELETE FROM memories WHERE user_id = $1", user_id)
        return int(status.split()[-1])

    async def _vector(
        self, text: str, given: npt.NDArray[np.float32] | None
    ) -> npt.NDArray[np.float32]:
        """The embedding of ``text`` (or ``given``), checked to be one 384-d vector."""
        if given is None:
            try:
                given = (await self._embedder.embed([text]))[0]
            except Exception as exc:
                raise EmbeddingFailed(f"embedding failed: {exc}") from exc
        vector = np.asarray(given, dtype=np.float32).reshape(-1)
        if vector.shape != (DIMENSIONS,):
            raise EmbeddingFailed(f"expected a {DIMENSIONS}-d embedding, got {vector.shape}")
        return vector

    async def _count(
        self, conn: asyncpg.Connection, user_id: uuid.UUID, conversation_id: uuid.UUID | None
    ) -> int:
        """The user's live memories, counted only up to the larger scan threshold (plus one)."""
        bound = max(self.config.exact_scan_max, self.config.text_scan_max)
        return int(await conn.fetchval(_COUNT_SQL, user_id, bound, conversation_id))

    async def _vector_candidates(
        self,
        conn: asyncpg.Connection,
        user_id: uuid.UUID,
        vector: npt.NDArray[np.float32],
        conversation_id: uuid.UUID | None,
        limit: int,
        live: int | None = None,
    ) -> _Rows:
        """Nearest live memories of the user: exact scan when few, else iterative HNSW."""
        if live is None:
            live = await self._count(conn, user_id, conversation_id)
        if live <= self.config.exact_scan_max:
            exact = await conn.fetch(_EXACT_VECTOR_SQL, user_id, vector, conversation_id, limit)
            return list(exact)
        # SET LOCAL equivalents: they end with this transaction.
        await conn.execute(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
            "set_config('hnsw.ef_search', $1, true), set_config('hnsw.max_scan_tuples', $2, true)",
            str(max(self.config.ef_search, limit)),
            str(self.config.max_scan_tuples),
        )
        return list(await conn.fetch(_INDEX_VECTOR_SQL, user_id, vector, conversation_id, limit))


def _validate(kind: str, content: str, importance: float) -> None:
    if kind not in KINDS:
        raise InvalidMemory(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    if not content.strip():
        raise InvalidMemory("a memory needs content")
    if not 0.0 <= importance <= 1.0:
        raise InvalidMemory(f"importance must be within [0, 1], not {importance}")


async def _insert(
    conn: asyncpg.Connection,
    row: tuple[uuid.UUID, uuid.UUID | None, str, str, npt.NDArray[np.float32], float],
    source_message_ids: Sequence[int],
    occurred_at: datetime | None,
) -> int:
    """Insert one memory; an unknown or foreign conversation is `MemoryNotFound`."""
    try:
        memory_id = await conn.fetchval(_INSERT_SQL, *row, list(source_message_ids), occurred_at)
    except asyncpg.ForeignKeyViolationError as exc:  # the user does not exist
        raise MemoryNotFound(f"no such user {row[0]}") from exc
    if memory_id is None:
        raise MemoryNotFound(f"conversation {row[1]} is not the user's")
    return int(memory_id)


def _candidate(row: Any) -> Candidate:
    return Candidate(
        id=row["id"],
        importance=float(row["importance"]),
        created_at=row["created_at"],
        content=row["content"],
    )


def _retrieved(row: Any, score: float) -> RetrievedMemory:
    return RetrievedMemory(
        id=row["id"],
        content=row["content"],
        kind=row["kind"],
        importance=float(row["importance"]),
        score=score,
        source_message_ids=list(row["source_message_ids"]),
        created_at=row["created_at"],
    )


def _memory(row: Any) -> Memory:
    return Memory(
        id=row["id"],
        user_id=row["user_id"],
        conversation_id=row["conversation_id"],
        kind=row["kind"],
        content=row["content"],
        importance=float(row["importance"]),
        source_message_ids=list(row["source_message_ids"]),
        superseded_by=row["superseded_by"],
        access_count=row["access_count"],
        created_at=row["created_at"],
        last_accessed_at=row["last_accessed_at"],
    )
