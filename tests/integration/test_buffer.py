"""The conversation buffer on real Redis and PostgreSQL: rebuilds, outages, trimming."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers import new_user
from redis.asyncio import Redis

from memory.buffer import BufferConfig, ConversationBuffer, buffer_keys
from memory.config import RedisConfig
from memory.conversation_log import ConversationLog
from memory.embedded import EmbeddedRedis
from memory.errors import ConversationOwnerError
from memory.messages import ConversationStore, MessageStore
from memory.redis_client import create_redis
from memory.summaries import SummaryStore


@pytest.fixture
def own_server() -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to flush or stop without disturbing the others."""
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        server = EmbeddedRedis(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
async def own_redis(own_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    client = create_redis(RedisConfig(socket_timeout_s=1.0), own_server.url)
    yield client
    await client.aclose()


async def new_conversation(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    user_id = await new_user(pool)
    conversation = await ConversationStore(pool).create(user_id)
    return conversation.id, user_id


def conversation_log(pool: asyncpg.Pool, redis: Redis, size: int = 40) -> ConversationLog:
    return ConversationLog(MessageStore(pool), ConversationBuffer(redis, BufferConfig(size=size)))


async def test_history_comes_from_the_buffer_pushed_on_append(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    conversation, user = await new_conversation(pool)

    stored = [await log.append(conversation, user, "user", f"m{i}") for i in range(5)]

    buffered = await ConversationBuffer(shared_redis).read(conversation)
    assert buffered.messages == stored
    history = await log.history(conversation, user)
    assert history.messages == stored
    assert history.summary is None


async def test_rebuilt_after_flush_equals_what_was_stored_trimmed_to_n(
    pool: asyncpg.Pool, own_redis: Redis
) -> None:
    log = conversation_log(pool, own_redis, size=5)
    conversation, user = await new_conversation(pool)
    stored = [await log.append(conversation, user, "user", f"m{i}") for i in range(12)]
    buffer = ConversationBuffer(own_redis, BufferConfig(size=5))
    assert (await buffer.read(conversation)).messages == stored[-5:]

    await own_redis.flushdb()
    assert (await buffer.read(conversation)).messages is None

    assert (await log.history(conversation, user)).messages == stored[-5:]
    assert (await buffer.read(conversation)).messages == stored[-5:]
    await log.append(conversation, user, "assistant", "after the rebuild")
    assert len((await buffer.read(conversation)).messages or []) == 5


async def test_append_while_redis_is_down_is_durable_and_rebuilt_after(
    pool: asyncpg.Pool,
    own_server: EmbeddedRedis,
    own_redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = conversation_log(pool, own_redis)
    conversation, user = await new_conversation(pool)
    stored = [await log.append(conversation, user, "user", f"before {i}") for i in range(3)]

    own_server.stop()
    with caplog.at_level(logging.WARNING, logger="memory.conversation_log"):
        stored += [await log.append(conversation, user, "user", f"during {i}") for i in range(2)]
        assert (await log.history(conversation, user)).messages == stored
    assert any("buffer push failed" in r.getMessage() for r in caplog.records)

    own_server.start()
    # Redis reloads its append-only file: the buffer is back as it was before the
    # outage, three messages long. History must notice and rebuild it.
    buffer = ConversationBuffer(own_redis)
    assert (await buffer.read(conversation)).messages == stored[:3]
    assert (await log.history(conversation, user)).messages == stored
    assert (await buffer.read(conversation)).messages == stored


async def test_concurrent_appends_from_two_instances_keep_the_buffer_complete(
    pool: asyncpg.Pool, redis_url: str, shared_redis: Redis
) -> None:
    other = create_redis(RedisConfig(), redis_url)
    logs = [conversation_log(pool, shared_redis, 10), conversation_log(pool, other, 10)]
    conversation, user = await new_conversation(pool)
    try:
        await asyncio.gather(
            *(logs[i % 2].append(conversation, user, "user", f"m{i}") for i in range(30))
        )
        expected = await MessageStore(pool).recent(conversation, 10)
        assert (await logs[0].history(conversation, user)).messages == expected
        assert (await logs[1].history(conversation, user)).messages == expected
    finally:
        await other.aclose()


async def test_a_push_that_would_leave_a_gap_drops_the_buffer(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    buffer = ConversationBuffer(shared_redis)
    conversation, user = await new_conversation(pool)
    first = await log.append(conversation, user, "user", "one")
    # Stored durably, but its push never reached Redis (as if Redis blinked).
    skipped = await MessageStore(pool).append(conversation, user, "user", "two")
    third = await MessageStore(pool).append_linked(conversation, user, "user", "three")

    assert not await buffer.push(third.message, third.previous_id)
    assert (await buffer.read(conversation)).messages is None
    history = await log.history(conversation, user)
    assert history.messages == [first, skipped, third.message]


async def test_summary_is_kept_apart_from_the_messages(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    conversation, user = await new_conversation(pool)
    first = await log.append(conversation, user, "user", "hello")
    second = await log.append(conversation, user, "assistant", "hi there")

    assert await SummaryStore(pool).save(conversation, user, "they said hello", first.id, 0)
    history = await log.history(conversation, user)
    assert history.summary is not None
    assert (history.summary.text, history.summary.through_id) == ("they said hello", first.id)
    assert history.messages == [second]  # only what the summary does not cover

    await ConversationBuffer(shared_redis).invalidate(conversation)
    assert await log.history(conversation, user) == history
    assert not await ConversationBuffer(shared_redis).set_summary(conversation, "older", 0)


async def test_buffer_ttl_is_set_and_refreshed_on_read(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    buffer = ConversationBuffer(shared_redis, BufferConfig(ttl_s=600))
    log = ConversationLog(MessageStore(pool), buffer)
    conversation, user = await new_conversation(pool)
    message = await log.append(conversation, user, "user", "hello")
    await buffer.set_summary(conversation, "hello", message.id)

    keys = buffer_keys(conversation)
    assert all(590 <= ttl <= 600 for ttl in [await shared_redis.ttl(key) for key in keys])
    for key in keys:
        await shared_redis.expire(key, 5)
    await log.history(conversation, user)
    assert all(ttl > 590 for ttl in [await shared_redis.ttl(key) for key in keys])


async def test_history_of_another_users_conversation_is_refused(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    conversation, owner = await new_conversation(pool)
    _, intruder = await new_conversation(pool)
    await log.append(conversation, owner, "user", "private")

    with pytest.raises(ConversationOwnerError):
        await log.history(conversation, intruder)
    with pytest.raises(ConversationOwnerError):
        await log.append(conversation, intruder, "user", "hello?")


async def test_empty_conversation_has_empty_history(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    conversation, user = await new_conversation(pool)

    assert (await log.history(conversation, user)).messages == []
    first = await log.append(conversation, user, "user", "first")
    assert (await ConversationBuffer(shared_redis).read(conversation)).messages == [first]


async def test_a_buffer_that_does_not_decode_is_rebuilt(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log = conversation_log(pool, shared_redis)
    buffer = ConversationBuffer(shared_redis)
    conversation, user = await new_conversation(pool)
    message = await log.append(conversation, user, "user", "hello")
    # As if another version wrote a message shape this one cannot read.
    await shared_redis.lset(buffer_keys(conversation)[0], 0, b"\xc1 not msgpack")

    assert (await buffer.read(conversation)).messages is None
    assert (await log.history(conversation, user)).messages == [message]
    assert (await buffer.read(conversation)).messages == [message]
