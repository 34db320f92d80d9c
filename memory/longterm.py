"""Long-term memory in PostgreSQL + pgvector: store, supersede, retrieve, list, erase.

`LongTermMemory` is the one store of a user's memories. Its write paths
(add, supersede, delete, erase) and listings (list, search, export) are
here; retrieval's candidate SQL and ranking are in `memory.retrieval`,
which `retrieve` runs inside one read transaction. Access statistics of
retrieved memories are counted and written in batches off the read path
(`memory.access`).

An episode may be added with its ``context`` (the episode before it): its
stored vector is then ``normalise(embed(content) + CONTEXT_WEIGHT *
embed(context))``. The work is done once, at write time, so retrieval stays
one query over one vector per memory; the content and the prompt are
unchanged. On the LoCoMo dev set it raised recall@10 by about 0.01
(docs/memory.md, "Second round"). The weight 0.3 keeps the episode's own
words dominant: the cosine to its own embedding stays above 0.95.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from memory.access import AccessStats
from memory.errors import (
    AlreadySuperseded,
    EmbeddingFailed,
    InvalidMemory,
    MemoryNotFound,
    SourcesGone,
)
from memory.metrics import default_memory_metrics
from memory.protocols import Embedder
from memory.retrieval import (
    Kind,
    Query,
    RetrievalConfig,
    RetrievedMemory,
    choose,
    find_candidates,
)

# The store's interface: its config and result types come from `memory.retrieval`.
__all__ = [
    "DIMENSIONS",
    "KINDS",
    "Kind",
    "LongTermMemory",
    "Memory",
    "RetrievalConfig",
    "RetrievedMemory",
]

KINDS: frozenset[str] = frozenset({"episodic", "semantic"})
DIMENSIONS = 384  # memories.embedding is vector(384)
CONTEXT_WEIGHT = 0.3  # share of the previous episode in an episode's vector


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


_MEMORY_COLUMNS = (
    "id, user_id, conversation_id, kind, content, importance, source_message_ids, "
    "superseded_by, access_count, created_at, last_accessed_at"
)

_SEARCH_SQL = f"""
SELECT {_MEMORY_COLUMNS} FROM memories, websearch_to_tsquery('english', $2) AS q(query)
WHERE user_id = $1 AND superseded_by IS NULL AND search @@ q.query
ORDER BY ts_rank_cd(search, q.query) DESC, id DESC LIMIT $3
"""
# The conversation, when given, must be the user's own. With $9 (``require_sources``)
# every source message must still exist, and is locked (FOR SHARE) until the insert
# commits: a concurrent `MessageStore.replace_tail` either removed it first (then
# nothing is stored) or waits, and then removes this memory with the others drawn
# from the messages it removes.
_INSERT_SQL = """
INSERT INTO memories (user_id, conversation_id, kind, content, embedding, importance,
                      source_message_ids, created_at)
SELECT $1, $2, $3, $4, $5, $6, $7, coalesce($8, now())
WHERE ($2::uuid IS NULL OR EXISTS (SELECT 1 FROM conversations WHERE id = $2 AND user_id = $1))
  AND (NOT $9 OR (SELECT count(DISTINCT s) FROM unnest($7::bigint[]) AS s) = (
      SELECT count(*) FROM (
          SELECT 1 FROM messages WHERE id = ANY($7::bigint[]) AND user_id = $1 FOR SHARE
      ) AS kept))
RETURNING id
"""
_SOURCES_GONE_SQL = """
SELECT EXISTS (
    SELECT 1 FROM unnest($2::bigint[]) AS s
    WHERE NOT EXISTS (SELECT 1 FROM messages WHERE id = s AND user_id = $1)
)
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
        context: str | None = None,
        require_sources: bool = False,
    ) -> int:
        """Store a memory and return its id. ``occurred_at`` defaults to now.

        ``context`` (what came just before, e.g. the previous episode) is folded
        into the vector when no ``embedding`` is given; it is not stored.
        ``require_sources``: store it only if every source message still exists, else
        `SourcesGone` (a job writing what it drew from messages the user may have
        replaced meanwhile).
        """
        _validate(kind, content, importance)
        if embedding is None and context and context.strip():
            vector = await self._vector_in_context(content, context)
        else:
            vector = await self._vector(content, embedding)
        async with self._pool.acquire() as conn:
            return await _insert(
                conn,
                (user_id, conversation_id, kind, content, vector, importance),
                source_message_ids,
                occurred_at,
                require_sources,
            )

    async def supersede(
        self,
        user_id: uuid.UUID,
        old_id: int,
        content: str,
        importance: float | None = None,
        source_message_ids: Sequence[int] = (),
        embedding: npt.NDArray[np.float32] | None = None,
        require_sources: bool = False,
    ) -> int:
        """Store ``content`` as the new version of memory ``old_id``; return the new id.

        The new memory keeps the old one's kind and conversation (and importance
        unless given); the old one points at it and leaves retrieval for good.
        ``require_sources`` as in `add`: with a source gone, nothing changes.
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
            new_id = await _insert(conn, row, source_message_ids, None, require_sources)
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
        if self.config.query_adapter is not None:
            vector = self.config.query_adapter.apply(vector)
        wanted = Query(user_id, query, vector, conversation_id)
        limit = max(self.config.candidates, 2 * k)
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            by_vector, by_text = await find_candidates(conn, self.config, wanted, limit)
        budget = self.config.token_budget if token_budget is None else token_budget
        now = now or datetime.now(UTC)
        chosen = choose(by_vector, by_text, self.config.ranking, k, budget, now, wanted.vector)
        self._access.record([m.id for m in chosen])
        default_memory_metrics().retrieval_done(time.perf_counter() - started)
        return chosen

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

    async def _vector_in_context(self, text: str, context: str) -> npt.NDArray[np.float32]:
        """The unit vector of ``text`` + CONTEXT_WEIGHT * ``context`` (one embedding call)."""
        try:
            own, before = await self._embedder.embed([text, context])
        except Exception as exc:
            raise EmbeddingFailed(f"embedding failed: {exc}") from exc
        own_vector = await self._vector(text, own)
        mixed = own_vector + CONTEXT_WEIGHT * await self._vector(context, before)
        norm = float(np.linalg.norm(mixed))
        return (mixed / norm).astype(np.float32) if norm > 0 else own_vector

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
    require_sources: bool = False,
) -> int:
    """Insert one memory; an unknown or foreign conversation is `MemoryNotFound`, a
    source message gone (with ``require_sources``) `SourcesGone`."""
    sources = list(source_message_ids)
    try:
        memory_id = await conn.fetchval(_INSERT_SQL, *row, sources, occurred_at, require_sources)
    except asyncpg.ForeignKeyViolationError as exc:  # the user does not exist
        raise MemoryNotFound(f"no such user {row[0]}") from exc
    if memory_id is None:
        if require_sources and await conn.fetchval(_SOURCES_GONE_SQL, row[0], sources):
            raise SourcesGone(f"a source message of {sources} is gone")
        raise MemoryNotFound(f"conversation {row[1]} is not the user's")
    return int(memory_id)


def _memory(row: Any) -> Memory:
    # The columns are the fields (_MEMORY_COLUMNS); importance is a real, bigint[] a list.
    return Memory(**dict(row))
