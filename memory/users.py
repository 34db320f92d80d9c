"""Everything stored about one user: exported as one document, or erased everywhere.

Erasure covers PostgreSQL (the user row cascades to conversations, messages,
their rolling summaries, memories with their vectors, API keys, personality
estimates with their observations, and goals with their notes) and Redis:
every key whose name holds the user's id or one of their conversations' ids
(sessions, buffers, summary copies, idempotency records with whole replies,
response-cache entries, rate-limit and in-progress counters), found by SCAN,
and the memory jobs that name them (payloads and results: `memory.jobs.erase_jobs`).
The scan walks the whole keyspace: an erasure is rare, and a key that a new
feature names after the user is erased without this module learning of it.
Redis goes first: if it cannot be reached the erasure fails before anything is
deleted, so the caller can retry instead of being told "erased" while copies
remain. If PostgreSQL then fails, retrying is also safe: the Redis keys would
only ever be rebuilt from PostgreSQL. The engines' caches (KV computed from the
user's prompts) are the server's to clear (`Engine.forget`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from memory.errors import ErasureFailed
from memory.jobs import erase_jobs
from memory.longterm import LongTermMemory, Memory
from memory.messages import (
    MESSAGE_COLUMNS,
    Conversation,
    ConversationStore,
    StoredMessage,
    message_from_row,
)
from memory.profile import Goal, ProfileStore, StoredObservation, TraitEstimate
from memory.session import SessionState, SessionStore
from memory.summaries import StoredSummary, SummaryStore


class UserRecord(msgspec.Struct, frozen=True):
    id: uuid.UUID
    username: str
    is_admin: bool
    created_at: datetime


class UserExport(msgspec.Struct, frozen=True):
    """Everything stored about one user (API keys without their secrets)."""

    user: UserRecord
    conversations: list[Conversation]
    messages: list[StoredMessage]
    summaries: list[StoredSummary]  # rolling summaries of the conversations
    memories: list[Memory]
    sessions: dict[str, SessionState]
    api_keys: list[dict[str, Any]]
    personality: list[TraitEstimate] = msgspec.field(default_factory=list)
    personality_observations: list[StoredObservation] = msgspec.field(default_factory=list)
    goals: list[Goal] = msgspec.field(default_factory=list)


class ErasureReport(msgspec.Struct, frozen=True):
    conversations: int
    messages: int
    memories: int
    redis_keys: int
    goals: int = 0


class UserData:
    """Export and erasure across PostgreSQL and Redis."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        memories: LongTermMemory,
        sessions: SessionStore | None = None,
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._memories = memories
        # reading a session refreshes its TTL: use the service's configured one
        self._session_store = sessions or SessionStore(redis)

    async def export(self, user_id: uuid.UUID) -> UserExport | None:
        """The whole record of ``user_id``; None for an unknown user."""
        row = await self._pool.fetchrow(
            "SELECT id, username, is_admin, created_at FROM users WHERE id = $1", user_id
        )
        if row is None:
            return None
        conversations = await self._conversations(user_id)
        profile = ProfileStore(self._pool)
        return UserExport(
            user=UserRecord(**dict(row)),
            conversations=conversations,
            messages=await self._messages(user_id),
            summaries=await SummaryStore(self._pool).export(user_id),
            memories=await self._memories.export(user_id),
            sessions=await self._sessions(user_id, conversations),
            api_keys=await self._keys(user_id),
            personality=await profile.traits(user_id),
            personality_observations=await profile.observations(user_id),
            goals=await profile.goals(user_id),
        )

    async def erase(self, user_id: uuid.UUID) -> ErasureReport:
        """Remove every trace of ``user_id``; raise `ErasureFailed` if a store is unreachable."""
        conversations = await self._conversations(user_id)
        removed_keys = await drop_redis_state(
            self._redis, [str(user_id), *(str(c.id) for c in conversations)]
        )
        async with self._pool.acquire() as conn, conn.transaction():
            messages = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE user_id = $1", user_id
            )
            memories = await conn.fetchval(
                "SELECT count(*) FROM memories WHERE user_id = $1", user_id
            )
            goals = await conn.fetchval("SELECT count(*) FROM goals WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM users WHERE id = $1", user_id)
        return ErasureReport(
            len(conversations), int(messages), int(memories), removed_keys, int(goals)
        )

    async def delete_conversation(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """One conversation: its Redis state (session, buffer, pending memory jobs), then its
        rows (`ConversationStore.delete`). Raises like `ConversationStore.get` when it is
        missing or another user's, before anything is removed."""
        store = ConversationStore(self._pool)
        await store.get(conversation_id, user_id)
        await drop_redis_state(self._redis, [str(conversation_id)])
        await store.delete(conversation_id, user_id)

    async def _conversations(self, user_id: uuid.UUID) -> list[Conversation]:
        rows = await self._pool.fetch(
            "SELECT id, user_id, persona, title, created_at, updated_at FROM conversations"
            " WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        return [Conversation(**dict(row)) for row in rows]

    async def _messages(self, user_id: uuid.UUID) -> list[StoredMessage]:
        rows = await self._pool.fetch(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = $1 ORDER BY id", user_id
        )
        return [message_from_row(row) for row in rows]

    async def _sessions(
        self, user_id: uuid.UUID, conversations: list[Conversation]
    ) -> dict[str, SessionState]:
        found = {}
        for conversation in conversations:
            state = await self._session_store.get(conversation.id, user_id)
            if state is not None:
                found[str(conversation.id)] = state
        return found

    async def _keys(self, user_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_keys"
            " WHERE user_id = $1 ORDER BY created_at",
            user_id,
        )
        return [dict(row) for row in rows]


async def drop_redis_state(redis: Redis, names: list[str]) -> int:
    """Delete the queued memory jobs and every key that names one of ``names`` (user or
    conversation ids), in one walk of the keyspace; how many went. Raises `ErasureFailed`
    when Redis is unreachable, before the database is touched."""
    try:
        removed = await erase_jobs(redis, names)
        wanted = [name.encode() for name in names]
        keys = [key async for key in redis.scan_iter() if any(w in key for w in wanted)]
        return removed + (int(await redis.delete(*keys)) if keys else 0)
    except RedisError as exc:
        raise ErasureFailed(f"Redis is unreachable; nothing was erased: {exc}") from exc
