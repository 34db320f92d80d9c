"""The rolling summary of a conversation: durable in PostgreSQL, folded by a background job.

A conversation's prompt shows the summary of its older messages and, verbatim,
the messages after the last one the summary covers (`memory.conversation_log`
filters the buffer by ``through_id``). The summariser keeps that verbatim tail
between ``keep`` and ``due_above`` messages (half and three quarters of the
buffer size): once more than ``due_above`` messages follow the summary, the
oldest of them are folded into it until ``keep`` are left. So

- the summary changes once every ``due_above - keep`` messages, not every turn,
  and between two folds the prompt only grows at its end (the engine reuses
  the KV cache of everything before the new messages);
- a fold starts while the messages it folds are still in the buffer, with a
  quarter of the buffer as slack, so a message leaves the prompt's verbatim
  part only once it is in the summary (unless the job falls that far behind).

Storage: one row per conversation in ``conversation_summaries`` (migration
0005), the source of truth. Redis holds a copy next to the buffer; a read
compares the copy's ``through_id`` with PostgreSQL's (one indexed lookup that
the history read makes anyway) and takes PostgreSQL's when they differ, so
losing Redis never loses the summary, and the job need not reach Redis at all.

The model is asked for JSON ``{"summary": ...}`` (`SUMMARY_SCHEMA`) given the
previous summary and the messages to fold. An unusable answer (engine error,
truncated, empty, invalid JSON, wrong shape, too short, nothing in common with
what it summarises) is recorded on the row (``failures``, ``last_failure``) and
logged; the previous summary stays as it was and the messages stay unfolded,
so the next job tries again. Messages of a turn that routing said must not be
remembered (the reply's metadata has ``store_in_memory: false``) are never
shown to the model; the summary moves past them. Two jobs folding the same messages at once (a
retry overlapping a new turn) cannot both win: the write is a compare-and-set
on the ``through_message_id`` the job started from.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from memory.buffer import Summary
from memory.errors import UnusableAnswer
from memory.extraction import is_grounded
from memory.model_answers import ask_json, decode_answer
from memory.protocols import JSONGenerator

log = logging.getLogger(__name__)

SummaryStatus = Literal["applied", "not_due", "unusable", "superseded"]

SUMMARY_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"summary": {"type": "string", "minLength": 20, "maxLength": 2000}},
    "required": ["summary"],
}

_SYSTEM = (
    "You keep the running summary of a conversation between a user and an assistant. "
    "Given the summary so far and the next messages, write the new summary: everything "
    "of the old summary that still matters plus what the new messages add (facts about "
    "the user, people and names, plans, dates, decisions, open questions, the mood). "
    "Third person, plain sentences, at most 200 words, no small talk. "
    'Answer only JSON: {"summary": "..."}.'
)


@dataclass(frozen=True, slots=True)
class SummaryConfig:
    """When to fold and how much (module docstring); ``buffer_size`` as the buffer's."""

    buffer_size: int = 40
    max_fold_chars: int = 8000  # messages shown to the model in one fold
    max_fold_messages: int = 200
    min_chars: int = 20

    @property
    def keep(self) -> int:
        """Messages left verbatim after a fold."""
        return max(1, self.buffer_size // 2)

    @property
    def due_above(self) -> int:
        """A fold is due when more messages than this follow the summary."""
        return max(self.keep, (3 * self.buffer_size) // 4)


class StoredSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation's summary row, as exported."""

    conversation_id: uuid.UUID
    summary: str | None  # None: no fold has succeeded yet
    through_message_id: int
    updated_at: datetime
    failures: int
    last_failure: str | None
    last_failure_at: datetime | None


class SummaryResult(msgspec.Struct, frozen=True, kw_only=True):
    """What one summariser run did; ``through_id`` is the summary's end afterwards."""

    status: SummaryStatus
    through_id: int
    folded: int = 0
    reason: str | None = None


class _Answer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    summary: str


_COLUMNS = (
    "conversation_id, summary, through_message_id, updated_at, failures, last_failure, "
    "last_failure_at"
)
# Compare-and-set: only a job that started from the stored end may move it.
_SAVE_SQL = """
INSERT INTO conversation_summaries AS s (conversation_id, user_id, summary, through_message_id)
SELECT id, user_id, $3, $4 FROM conversations WHERE id = $1 AND user_id = $2
ON CONFLICT (conversation_id) DO UPDATE
SET summary = excluded.summary, through_message_id = excluded.through_message_id,
    updated_at = now()
WHERE s.through_message_id = $5
RETURNING 1
"""
_FAILURE_SQL = """
INSERT INTO conversation_summaries AS s
    (conversation_id, user_id, failures, last_failure, last_failure_at)
SELECT id, user_id, 1, $3, now() FROM conversations WHERE id = $1 AND user_id = $2
ON CONFLICT (conversation_id) DO UPDATE
SET failures = s.failures + 1, last_failure = excluded.last_failure, last_failure_at = now()
"""
# The oldest messages after the summary, how many there are in all, and which
# belong to a turn that routing said must not be remembered (the reply carries
# ``store_in_memory: false``; the user message is the one just before it).
_PENDING_SQL = """
SELECT id, role, content, count(*) OVER () AS pending,
    coalesce(metadata->>'store_in_memory' = 'false' OR (role = 'user'
        AND lead(metadata->>'store_in_memory') OVER (ORDER BY id) = 'false'), false) AS forget
FROM messages
WHERE conversation_id = $1 AND user_id = $2 AND id > $3 AND role <> 'system'
ORDER BY id LIMIT $4
"""


class SummaryStore:
    """``conversation_summaries`` rows: read, compare-and-set, failures, export."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def get(self, conversation_id: uuid.UUID) -> Summary | None:
        """The current summary, or None when no fold has succeeded yet."""
        row = await self._pool.fetchrow(
            "SELECT summary, through_message_id FROM conversation_summaries "
            "WHERE conversation_id = $1 AND summary IS NOT NULL",
            conversation_id,
        )
        return None if row is None else Summary(row["summary"], row["through_message_id"])

    async def row(self, conversation_id: uuid.UUID) -> StoredSummary | None:
        """The whole row (summary, failures), or None."""
        row = await self._pool.fetchrow(
            f"SELECT {_COLUMNS} FROM conversation_summaries WHERE conversation_id = $1",
            conversation_id,
        )
        return None if row is None else StoredSummary(**dict(row))

    async def save(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        text: str,
        through_id: int,
        expected_through_id: int,
    ) -> bool:
        """Store ``text`` as the summary up to ``through_id`` if the stored one still ends
        at ``expected_through_id`` (0: none yet); False if another fold got there first
        or the conversation is not the user's."""
        done = await self._pool.fetchval(
            _SAVE_SQL, conversation_id, user_id, text, through_id, expected_through_id
        )
        return done is not None

    async def record_failure(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, reason: str
    ) -> None:
        """Count an unusable fold and keep its reason; the summary itself is not touched."""
        await self._pool.execute(_FAILURE_SQL, conversation_id, user_id, reason[:500])

    async def export(self, user_id: uuid.UUID) -> list[StoredSummary]:
        """Every summary row of the user's conversations."""
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM conversation_summaries WHERE user_id = $1 "
            "ORDER BY updated_at, conversation_id",
            user_id,
        )
        return [StoredSummary(**dict(row)) for row in rows]


class Summariser:
    """Folds a conversation's oldest unsummarised messages into its rolling summary."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        generator: JSONGenerator,
        config: SummaryConfig | None = None,
    ) -> None:
        self._pool = pool
        self._store = SummaryStore(pool)
        self._generator = generator
        self.config = config or SummaryConfig()

    async def summarise(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> SummaryResult:
        """Fold if due (module docstring); never raises for an unusable answer."""
        previous = await self._store.get(conversation_id)
        through = previous.through_id if previous else 0
        pending = await self._pool.fetch(
            _PENDING_SQL, conversation_id, user_id, through, self.config.max_fold_messages
        )
        count = pending[0]["pending"] if pending else 0
        if count <= self.config.due_above:
            return SummaryResult(status="not_due", through_id=through)
        due = pending[: count - self.config.keep]
        shown = _take([r for r in due if not r["forget"]], self.config.max_fold_chars)
        # Past the last message shown; forgotten ones after it go with it.
        end = due[-1]["id"] if not shown or shown[-1] is _last_kept(due) else shown[-1]["id"]
        if not shown:  # only turns that must not be remembered: nothing to ask
            return await self._pass_over(user_id, conversation_id, previous, end)
        text = "\n".join(f"{r['role']}: {r['content']}" for r in shown)
        try:
            summary = await self._ask(user_id, previous.text if previous else None, text)
        except UnusableAnswer as exc:
            reason = str(exc)
            log.warning("conversation summary unusable for %s: %s", conversation_id, reason)
            await self._store.record_failure(conversation_id, user_id, reason)
            return SummaryResult(status="unusable", through_id=through, reason=reason)
        if not await self._store.save(conversation_id, user_id, summary, end, through):
            return SummaryResult(status="superseded", through_id=through)
        return SummaryResult(status="applied", through_id=end, folded=len(shown))

    async def _pass_over(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, previous: Summary | None, end: int
    ) -> SummaryResult:
        """Move an existing summary past messages that are not to be summarised.

        Without a summary yet there is nothing to move (and an empty one would be
        invented): the messages wait for a fold that also holds others.
        """
        through = previous.through_id if previous else 0
        if previous is None:
            return SummaryResult(status="not_due", through_id=0)
        if not await self._store.save(conversation_id, user_id, previous.text, end, through):
            return SummaryResult(status="superseded", through_id=through)
        return SummaryResult(status="applied", through_id=end)

    async def _ask(self, user_id: uuid.UUID, previous: str | None, text: str) -> str:
        question = f"Summary so far:\n{previous or '(none)'}\n\nNext messages:\n{text}"
        raw = await ask_json(self._generator, _SYSTEM, question, SUMMARY_SCHEMA, user_id)
        summary = parse_summary(raw, self.config.min_chars)
        if not is_grounded(summary, f"{previous or ''}\n{text}"):
            raise UnusableAnswer("summary shares no word with the conversation")
        return summary


def parse_summary(raw: str, min_chars: int) -> str:
    """The summary in the model's answer, or `UnusableAnswer` saying why not."""
    summary = " ".join(decode_answer(raw, _Answer).summary.split())
    if len(summary) < min_chars:
        raise UnusableAnswer(f"summary shorter than {min_chars} characters")
    return summary


def _last_kept(rows: Sequence[asyncpg.Record]) -> asyncpg.Record | None:
    """The newest row that may be summarised."""
    return next((r for r in reversed(rows) if not r["forget"]), None)


def _take(rows: Sequence[asyncpg.Record], max_chars: int) -> list[asyncpg.Record]:
    """The oldest rows whose text fits in ``max_chars`` (always at least one)."""
    taken: list[asyncpg.Record] = []
    used = 0
    for row in rows:
        used += len(row["content"]) + 12
        if taken and used > max_chars:
            break
        taken.append(row)
    return taken
