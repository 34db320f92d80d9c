"""Export and erasure of a user across the real PostgreSQL and Redis."""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

import asyncpg
import msgspec
import numpy as np
import pytest
from redis.asyncio import Redis

from memory.accounts import AccountStore
from memory.buffer import ConversationBuffer, buffer_keys
from memory.config import DatabaseConfig, RedisConfig
from memory.conversation_log import ConversationLog
from memory.db import create_pool
from memory.embedded import EmbeddedRedis
from memory.errors import ErasureFailed
from memory.longterm import LongTermMemory
from memory.messages import ConversationStore, MessageStore
from memory.migrate import migrate_url
from memory.redis_client import create_redis
from memory.session import SessionConfig, SessionStore, session_key
from memory.summaries import SummaryStore
from memory.users import UserData


class NoEmbedder:
    """Every memory here is added with its vector, so nothing is ever embedded."""

    dimensions = 384

    async def embed(self, texts: object) -> np.ndarray:
        raise AssertionError("not expected to embed")


async def populate(pool: asyncpg.Pool, redis: Redis, name: str) -> tuple[uuid.UUID, uuid.UUID]:
    accounts = AccountStore(pool)
    user_id = await accounts.ensure_user(name)
    await accounts.create_key(name)
    conversation = await ConversationStore(pool).create(user_id, title="chat")
    log = ConversationLog(MessageStore(pool), ConversationBuffer(redis))
    await log.append(conversation.id, user_id, "user", f"I am {name} and I love tea")
    reply = await log.append(conversation.id, user_id, "assistant", "Tea is lovely.")
    summary = f"{name} said they love tea."
    assert await SummaryStore(pool).save(conversation.id, user_id, summary, reply.id - 1, 0)
    await log.history(conversation.id, user_id)  # fills the Redis buffer and summary copy
    await SessionStore(redis).get_or_create(conversation.id, user_id)
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    memories = LongTermMemory(pool, NoEmbedder())
    await memories.add(user_id, "semantic", f"{name} loves tea", 0.8, [1], embedding=vector)
    return user_id, conversation.id


async def test_export_contains_everything_and_encodes(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    redis = shared_redis
    user_id, conversation_id = await populate(pool, redis, f"ada-{uuid.uuid4().hex[:6]}")
    data = UserData(pool, redis, LongTermMemory(pool, NoEmbedder()))
    export = await data.export(user_id)
    assert export is not None
    assert [c.id for c in export.conversations] == [conversation_id]
    assert [m.role for m in export.messages] == ["user", "assistant"]
    assert [s.summary for s in export.summaries] == [f"{export.user.username} said they love tea."]
    assert len(export.memories) == 1
    assert export.memories[0].content.endswith("loves tea")
    assert str(conversation_id) in export.sessions
    assert len(export.api_keys) == 1 and "key_hash" not in export.api_keys[0]
    assert b"loves tea" in msgspec.json.encode(export)
    assert await data.export(uuid.uuid4()) is None


async def test_erase_leaves_nothing_and_spares_others(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    redis = shared_redis
    gone, conversation = await populate(pool, redis, f"bob-{uuid.uuid4().hex[:6]}")
    kept, kept_conversation = await populate(pool, redis, f"eve-{uuid.uuid4().hex[:6]}")
    data = UserData(pool, redis, LongTermMemory(pool, NoEmbedder()))

    report = await data.erase(gone)
    assert (report.conversations, report.messages, report.memories) == (1, 2, 1)
    assert report.redis_keys >= 3  # the session, the buffer and the summary copy at least
    tables = ("users", "conversations", "messages", "conversation_summaries", "memories")
    for table in (*tables, "api_keys"):
        column = "id" if table == "users" else "user_id"
        left = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {column} = $1", gone)
        assert left == 0, table
    assert await redis.exists(session_key(conversation), *buffer_keys(conversation)) == 0

    survivor = await data.export(kept)
    assert survivor is not None and len(survivor.messages) == 2
    assert await redis.exists(session_key(kept_conversation)) == 1


async def test_erase_refuses_while_redis_is_down(database_url: str) -> None:
    await migrate_url(database_url)
    pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=2), database_url)
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        server = EmbeddedRedis(Path(directory))
        redis = create_redis(RedisConfig(socket_timeout_s=1.0), server.start())
        try:
            user_id, _ = await populate(pool, redis, "carol")
            server.stop()
            data = UserData(pool, redis, LongTermMemory(pool, NoEmbedder()))
            with pytest.raises(ErasureFailed, match="nothing was erased"):
                await data.erase(user_id)
            assert (
                await pool.fetchval("SELECT count(*) FROM messages WHERE user_id = $1", user_id)
                == 2
            )
        finally:
            await redis.aclose()
            server.stop()
            await pool.close()


async def test_export_keeps_the_configured_session_ttl(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    user_id, conversation_id = await populate(pool, shared_redis, f"ttl-{uuid.uuid4().hex[:6]}")
    sessions = SessionStore(shared_redis, SessionConfig(ttl_s=600))
    data = UserData(pool, shared_redis, LongTermMemory(pool, NoEmbedder()), sessions)
    export = await data.export(user_id)
    assert export is not None and str(conversation_id) in export.sessions
    assert 0 < await shared_redis.ttl(session_key(conversation_id)) <= 600
