"""Consolidation of one user's memories: merge near-duplicates, decay, summarize sessions.

Run per user by the daily consolidation job (`memory.jobs`):

- **Merge**: two live semantic memories with cosine similarity at least
  ``merge_similarity`` (0.92) are one fact twice; the lesser (lower
  importance, then older) is superseded by the other, which keeps the higher
  importance. No new row: the keeper already says it.
- **Decay**: a live memory older than ``decay_after_days`` (30) that was never
  retrieved loses ``1 - decay_factor`` (10 %) of its importance per run, down
  to ``decay_floor`` (0.05). Run daily, so an unused memory halves in about a
  week of runs after its first month; retrieval ranks it lower, never drops it.
- **Summarize**: a conversation idle for ``summarize_after_days`` (7) with at
  least ``summarize_min_episodes`` (4) episodes and no summary yet gets one,
  written by the chat model (JSON ``{"summary": ...}``) and stored as an
  episodic memory starting with ``SUMMARY_PREFIX`` whose provenance is the
  union of the episodes'. The episodes stay: they hold the details.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from memory.longterm import LongTermMemory
from memory.model_answers import Message
from memory.protocols import JSONGenerator

log = logging.getLogger(__name__)

SUMMARY_PREFIX = "Session summary: "
SUMMARY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 10, "maxLength": 600}},
    "required": ["summary"],
}


@dataclass(frozen=True, slots=True)
class ConsolidationConfig:
    """Thresholds of consolidation (module docstring)."""

    merge_similarity: float = 0.92
    decay_after_days: int = 30
    decay_factor: float = 0.9
    decay_floor: float = 0.05
    summarize_after_days: int = 7
    summarize_min_episodes: int = 4
    summarize_max_chars: int = 6000


class ConsolidationResult(msgspec.Struct, frozen=True, kw_only=True):
    merged: int
    decayed: int
    summaries: int
    unusable_summaries: list[str]


class _Summary(msgspec.Struct, frozen=True):
    summary: str


_DUPLICATES_SQL = """
WITH live AS MATERIALIZED (
    SELECT id, importance, created_at, embedding FROM memories
    WHERE user_id = $1 AND kind = 'semantic' AND superseded_by IS NULL
)
SELECT a.id AS a_id, a.importance AS a_imp, a.created_at AS a_at,
       b.id AS b_id, b.importance AS b_imp, b.created_at AS b_at
FROM live a JOIN live b ON a.id < b.id
WHERE 1 - (a.embedding <=> b.embedding) >= $2
ORDER BY 1 - (a.embedding <=> b.embedding) DESC
"""
_DECAY_SQL = """
UPDATE memories SET importance = greatest($3::real, importance * $2::real)
WHERE user_id = $1 AND superseded_by IS NULL AND last_accessed_at IS NULL
  AND created_at < now() - make_interval(days => $4) AND importance > $3::real
"""
_IDLE_CONVERSATIONS_SQL = """
SELECT c.id FROM conversations c
WHERE c.user_id = $1 AND c.updated_at < now() - make_interval(days => $2)
  AND NOT EXISTS (SELECT 1 FROM memories m WHERE m.conversation_id = c.id
                  AND m.kind = 'episodic' AND m.content LIKE $4 || '%')
  AND (SELECT count(*) FROM memories m WHERE m.conversation_id = c.id
       AND m.kind = 'episodic' AND m.superseded_by IS NULL) >= $3
"""
_EPISODES_SQL = """
SELECT content, importance, source_message_ids FROM memories
WHERE user_id = $1 AND conversation_id = $2 AND kind = 'episodic' AND superseded_by IS NULL
ORDER BY created_at, id
"""


class Consolidator:
    """Merge, decay and summarize one user's memories."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: LongTermMemory,
        generator: JSONGenerator | None,
        config: ConsolidationConfig | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._generator = generator
        self.config = config or ConsolidationConfig()

    async def consolidate(self, user_id: uuid.UUID) -> ConsolidationResult:
        """All three steps for one user."""
        merged = await self.merge_duplicates(user_id)
        decayed = await self.decay(user_id)
        summaries, unusable = await self.summarize_sessions(user_id)
        return ConsolidationResult(
            merged=merged, decayed=decayed, summaries=summaries, unusable_summaries=unusable
        )

    async def merge_duplicates(self, user_id: uuid.UUID) -> int:
        """Supersede the lesser of each near-duplicate pair; return how many were merged."""
        async with self._pool.acquire() as conn, conn.transaction():
            pairs = await conn.fetch(_DUPLICATES_SQL, user_id, self.config.merge_similarity)
            gone: set[int] = set()
            for pair in pairs:
                keep, lose = _keeper(pair)
                if keep[0] in gone or lose[0] in gone:
                    continue  # already merged into something else this run
                await conn.execute(
                    "UPDATE memories SET superseded_by = $1 WHERE id = $2", keep[0], lose[0]
                )
                await conn.execute(
                    "UPDATE memories SET importance = greatest(importance, $2) WHERE id = $1",
                    keep[0],
                    lose[1],
                )
                gone.add(lose[0])
        return len(gone)

    async def decay(self, user_id: uuid.UUID) -> int:
        """Lower the importance of old memories never retrieved; return how many."""
        c = self.config
        status = await self._pool.execute(
            _DECAY_SQL, user_id, c.decay_factor, c.decay_floor, c.decay_after_days
        )
        return int(status.split()[-1])

    async def summarize_sessions(self, user_id: uuid.UUID) -> tuple[int, list[str]]:
        """Summaries of idle conversations; returns (stored, reasons of unusable answers)."""
        if self._generator is None:
            return 0, []
        c = self.config
        rows = await self._pool.fetch(
            _IDLE_CONVERSATIONS_SQL,
            user_id,
            c.summarize_after_days,
            c.summarize_min_episodes,
            SUMMARY_PREFIX,
        )
        stored, unusable = 0, []
        for row in rows:
            reason = await self._summarize(user_id, row["id"])
            if reason is None:
                stored += 1
            else:
                unusable.append(reason)
                log.warning("session summary unusable for user %s: %s", user_id, reason)
        return stored, unusable

    async def _summarize(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> str | None:
        """Store one conversation's summary; return why not when the model's answer is unusable."""
        assert self._generator is not None
        episodes = await self._pool.fetch(_EPISODES_SQL, user_id, conversation_id)
        text = "\n\n".join(e["content"] for e in episodes)[-self.config.summarize_max_chars :]
        prompt = [
            Message("system", "Summarize this conversation with the user in a few sentences."),
            Message("user", text),
        ]
        try:
            raw = await self._generator.generate_json(prompt, SUMMARY_SCHEMA, str(user_id))
            summary = " ".join(msgspec.json.decode(raw, type=_Summary).summary.split())
        except Exception as exc:  # engine error, invalid JSON, wrong shape
            return f"{type(exc).__name__}: {exc}"
        if len(summary) < 10:
            return "summary too short"
        sources = sorted({i for e in episodes for i in e["source_message_ids"]})
        importance = max(float(e["importance"]) for e in episodes)
        await self._store.add(
            user_id, "episodic", SUMMARY_PREFIX + summary, importance, sources, conversation_id
        )
        return None


def _keeper(pair: Any) -> tuple[tuple[int, float], tuple[int, float]]:
    """(keep, lose) as (id, importance): higher importance wins, then the newer."""
    a = (pair["a_id"], float(pair["a_imp"]), pair["a_at"])
    b = (pair["b_id"], float(pair["b_imp"]), pair["b_at"])
    keep, lose = (a, b) if (a[1], a[2], a[0]) > (b[1], b[2], b[0]) else (b, a)
    return (keep[0], keep[1]), (lose[0], lose[1])
