"""Access statistics of memories (count, last retrieved), written off the read path.

Retrieval used to bump ``access_count`` and ``last_accessed_at`` in its own
transaction: a write, with its WAL flush at commit, on every chat turn, for
numbers that only the daily consolidation reads (decay skips memories that were
ever retrieved). `AccessStats` counts the retrieved ids in memory instead and
writes them in one ``UPDATE`` per ``flush_s`` (one second by default) from a
background task, so a burst of turns costs one write, and none of it is waited
for by a turn.

What that trades: ``last_accessed_at`` is the time of the write, up to
``flush_s`` after the retrieval; counts pending when a process dies (not
when it shuts down: `close` writes them) are lost. A failed write is logged
and its counts are kept for the next one; they are statistics, so they never
fail a retrieval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable

import asyncpg

log = logging.getLogger(__name__)

# Adds each id's count; ids deleted meanwhile simply match nothing.
_ACCESS_SQL = """
UPDATE memories AS m SET access_count = m.access_count + a.n, last_accessed_at = now()
FROM unnest($1::bigint[], $2::integer[]) AS a(id, n) WHERE m.id = a.id
"""


class AccessStats:
    """Counts retrievals per memory and writes them in batches."""

    def __init__(self, pool: asyncpg.Pool, flush_s: float = 1.0) -> None:
        self._pool = pool
        self._flush_s = flush_s
        self._pending: Counter[int] = Counter()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Memories with counts not yet written."""
        return len(self._pending)

    def record(self, ids: Iterable[int]) -> None:
        """Count one retrieval of each id; a write follows within ``flush_s``."""
        self._pending.update(ids)
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._flush_later(), name="memory-access-stats")

    async def flush(self) -> None:
        """Write every pending count now."""
        pending, self._pending = self._pending, Counter()
        if not pending:
            return
        ids, counts = zip(*pending.items(), strict=True)
        try:
            await self._pool.execute(_ACCESS_SQL, list(ids), list(counts))
        except asyncio.CancelledError:
            self._pending.update(pending)  # `close` writes them
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            self._pending.update(pending)  # kept for the next write
            log.warning(
                "memory access statistics not written; kept for the next try",
                extra={"memories": len(pending), "error": type(exc).__name__},
            )

    async def close(self) -> None:
        """Stop the background write and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._flush_s)
        await self.flush()
