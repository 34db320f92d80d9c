"""One service for a conversation's messages: durable in PostgreSQL, fast from Redis.

`ConversationLog.append` writes to PostgreSQL first and only then pushes to
the Redis buffer; a Redis failure is logged and never fails the append, so
losing Redis loses no message. `ConversationLog.history` serves the buffer
when it is current and otherwise rebuilds it from PostgreSQL.

"Current" is checked on every read: the conversation's owner and newest message
id come from one indexed PostgreSQL lookup (run concurrently with the Redis
read) and must match the buffer's ``last_id``. A cheaper read that trusted
Redis alone would serve a stale buffer after Redis comes back from a restart
(its append-only file restores the buffer as it was before the outage, without
the messages appended while it was down), and no instance could tell. The
lookup also enforces ownership: a conversation is only read by its user.

The rolling summary is checked the same way: the lookup also returns the last
message id the durable summary (`memory.summaries`, PostgreSQL) covers; a
Redis copy that ends elsewhere, or none, is replaced by the durable one. The
history returned holds only the messages after the summary, so the prompt
shows each message once, summarised or verbatim.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import msgspec
from redis.exceptions import RedisError

from memory.buffer import BufferSnapshot, ConversationBuffer, Summary
from memory.messages import (
    ConversationHead,
    MessageStore,
    ReplacedTail,
    Role,
    StoredMessage,
    check_owner,
)
from memory.summaries import SummaryStore

log = logging.getLogger(__name__)


class ConversationHistory(msgspec.Struct, frozen=True):
    """What a chat turn needs of the past: the summary of older messages and the newest
    ones after it (oldest first)."""

    summary: Summary | None
    messages: list[StoredMessage]


class ConversationLog:
    """Appends and reads conversation messages; PostgreSQL durable, Redis as the fast path."""

    def __init__(
        self,
        messages: MessageStore,
        buffer: ConversationBuffer,
        summaries: SummaryStore | None = None,
    ) -> None:
        self._messages = messages
        self._buffer = buffer
        self._summaries = summaries or SummaryStore(messages.pool)

    async def append(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        role: Role,
        content: str,
        metadata: dict[str, Any] | None = None,
        token_count: int | None = None,
    ) -> StoredMessage:
        """Store a message durably, then add it to the buffer (best effort)."""
        appended = await self._messages.append_linked(
            conversation_id, user_id, role, content, metadata, token_count
        )
        try:
            await self._buffer.push(appended.message, appended.previous_id)
        except RedisError as exc:
            # Stored durably already; the next read finds the buffer behind and rebuilds it.
            log.warning(
                "buffer push failed; message stored, buffer rebuilt on next read",
                extra={"conversation_id": str(conversation_id), "error": type(exc).__name__},
            )
        return appended.message

    async def replace_tail(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        user_message_id: int,
        role: Role,
        content: str,
        metadata: dict[str, Any] | None = None,
    ) -> ReplacedTail:
        """`MessageStore.replace_tail`, then the buffer dropped (best effort): it holds the
        replaced messages. A failed drop serves nothing stale: the new message's id is
        the newest, which the buffer does not end at, so the next read rebuilds it."""
        replaced = await self._messages.replace_tail(
            conversation_id, user_id, user_message_id, role, content, metadata
        )
        try:
            await self._buffer.invalidate(conversation_id)
        except RedisError as exc:
            log.warning(
                "buffer not dropped after a replaced exchange; rebuilt on next read",
                extra={"conversation_id": str(conversation_id), "error": type(exc).__name__},
            )
        return replaced

    async def user_turns(self, conversation_id: uuid.UUID) -> int:
        """The conversation's turn count, from PostgreSQL (the buffer holds only the newest)."""
        return await self._messages.user_turns(conversation_id)

    async def history(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> ConversationHistory:
        """The summary and newest messages (oldest first) of ``user_id``'s conversation.

        Raises `ConversationNotFoundError` / `ConversationOwnerError` (see
        `memory.errors`); Redis being down only makes the read slower.
        """
        head, snapshot = await asyncio.gather(
            self._messages.head(conversation_id), self._read_buffer(conversation_id)
        )
        check_owner(conversation_id, head.user_id, user_id)
        summary = await self._summary(conversation_id, snapshot, head.summary_through_id)
        messages = _current_messages(snapshot, head)
        if messages is None:
            messages = await self._messages.recent(conversation_id, self._buffer.config.size)
            if snapshot is not None:  # Redis answered: worth storing the rebuild there
                await self._store_rebuilt(conversation_id, messages)
        if summary is not None:
            messages = [m for m in messages if m.id > summary.through_id]
        return ConversationHistory(summary, messages)

    async def _summary(
        self, conversation_id: uuid.UUID, snapshot: BufferSnapshot | None, durable_through: int
    ) -> Summary | None:
        """The durable summary, from Redis when its copy is current (``durable_through``)."""
        if durable_through == 0:
            return None
        cached = snapshot.summary if snapshot is not None else None
        if cached is not None and cached.through_id == durable_through:
            return cached
        summary = await self._summaries.get(conversation_id)
        if summary is not None and snapshot is not None:
            try:
                await self._buffer.set_summary(conversation_id, summary.text, summary.through_id)
            except RedisError as exc:
                log.warning(
                    "summary copy not stored in the buffer",
                    extra={"conversation_id": str(conversation_id), "error": type(exc).__name__},
                )
        return summary

    async def _read_buffer(self, conversation_id: uuid.UUID) -> BufferSnapshot | None:
        try:
            return await self._buffer.read(conversation_id)
        except RedisError as exc:
            log.warning(
                "buffer unreadable; reading history from the database",
                extra={"conversation_id": str(conversation_id), "error": type(exc).__name__},
            )
            return None

    async def _store_rebuilt(
        self, conversation_id: uuid.UUID, messages: list[StoredMessage]
    ) -> None:
        try:
            await self._buffer.replace(conversation_id, messages)
        except RedisError as exc:
            log.warning(
                "buffer rebuild not stored",
                extra={"conversation_id": str(conversation_id), "error": type(exc).__name__},
            )


def _current_messages(
    snapshot: BufferSnapshot | None, head: ConversationHead
) -> list[StoredMessage] | None:
    """The buffered messages if they end at the conversation's newest message, else None."""
    if snapshot is None or snapshot.messages is None:
        return None
    return snapshot.messages if snapshot.last_id == (head.last_message_id or 0) else None
