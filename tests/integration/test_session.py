"""Session state on a real Redis: atomic across instances, TTL, ownership."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
import redis
from redis.asyncio import Redis

from memory.config import RedisConfig
from memory.errors import ConversationOwnerError, SessionConflictError, SessionUnavailableError
from memory.redis_client import create_redis
from memory.session import SessionConfig, SessionState, SessionStore, session_key

Clients = tuple[Redis, Redis]


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[Clients]:
    """Two clients with their own connection pools: two instances of the service."""
    first = create_redis(RedisConfig(), redis_url)
    second = create_redis(RedisConfig(), redis_url)
    yield first, second
    await first.aclose()
    await second.aclose()


def ids() -> tuple[uuid.UUID, uuid.UUID]:
    return uuid.uuid4(), uuid.uuid4()


async def test_get_or_create_then_get(clients: Clients) -> None:
    store = SessionStore(clients[0])
    conversation, user = ids()

    assert await store.get(conversation, user) is None
    created = await store.get_or_create(conversation, user)
    assert (created.conversation_id, created.user_id) == (conversation, user)
    assert (created.explicit_attempts, created.age_verified, created.route) == (0, False, None)
    assert await store.get_or_create(conversation, user) == created
    assert await store.get(conversation, user) == created


async def test_update_round_trips_every_field(clients: Clients) -> None:
    store = SessionStore(clients[0])
    conversation, user = ids()
    verified_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)

    def verify(state: SessionState) -> SessionState:
        return msgspec.structs.replace(
            state,
            age_verified=True,
            age_verified_at=verified_at,
            route="romance",
            route_lock_remaining=3,
            last_content_label="flirt",
        )

    updated = await store.update(conversation, user, verify)

    assert await store.get(conversation, user) == updated
    assert (updated.age_verified_at, updated.route, updated.route_lock_remaining) == (
        verified_at,
        "romance",
        3,
    )


async def test_concurrent_increments_from_two_instances_lose_nothing(
    clients: Clients,
) -> None:
    stores = [SessionStore(client) for client in clients]
    conversation, user = ids()

    await asyncio.gather(*(stores[i % 2].increment_attempts(conversation, user) for i in range(50)))

    state = await stores[0].get(conversation, user)
    assert state is not None and state.explicit_attempts == 50


async def test_concurrent_updates_from_two_instances_lose_nothing(
    clients: Clients,
) -> None:
    stores = [SessionStore(client) for client in clients]
    conversation, user = ids()

    def lock_one_more(state: SessionState) -> SessionState:
        return msgspec.structs.replace(state, route_lock_remaining=state.route_lock_remaining + 1)

    # Two different operations racing: the Python transform (WATCH/MULTI) and
    # the Lua increment must not overwrite each other either.
    await asyncio.gather(
        *(stores[i % 2].update(conversation, user, lock_one_more) for i in range(50)),
        *(stores[i % 2].increment_attempts(conversation, user) for i in range(20)),
    )

    state = await stores[1].get(conversation, user)
    assert state is not None
    assert (state.route_lock_remaining, state.explicit_attempts) == (50, 20)


async def test_exhausted_retries_raise_a_conflict(redis_url: str, clients: Clients) -> None:
    store = SessionStore(clients[0], SessionConfig(max_retries=2, retry_base_s=0))
    conversation, user = ids()
    await store.get_or_create(conversation, user)
    other_instance = redis.Redis.from_url(redis_url)
    calls = 0

    def meddled(state: SessionState) -> SessionState:
        # Another instance writes between our read and our commit, every time.
        nonlocal calls
        calls += 1
        other_instance.hset(session_key(conversation), "route", b'"other"')
        return state

    try:
        with pytest.raises(SessionConflictError):
            await store.update(conversation, user, meddled)
    finally:
        other_instance.close()
    assert calls == 3


async def test_ttl_is_set_and_refreshed_on_use(clients: Clients) -> None:
    client = clients[0]
    store = SessionStore(client, SessionConfig(ttl_s=600))
    conversation, user = ids()
    key = session_key(conversation)

    await store.get_or_create(conversation, user)
    assert 590 <= await client.ttl(key) <= 600

    for use in (
        store.get(conversation, user),
        store.increment_attempts(conversation, user),
        store.update(conversation, user, lambda s: s),
        store.get_or_create(conversation, user),
    ):
        await client.expire(key, 5)
        await use
        assert await client.ttl(key) > 590


async def test_another_users_session_is_refused(clients: Clients) -> None:
    store = SessionStore(clients[0])
    conversation, owner = ids()
    intruder = uuid.uuid4()
    await store.increment_attempts(conversation, owner)

    with pytest.raises(ConversationOwnerError):
        await store.get(conversation, intruder)
    with pytest.raises(ConversationOwnerError):
        await store.get_or_create(conversation, intruder)
    with pytest.raises(ConversationOwnerError):
        await store.increment_attempts(conversation, intruder)
    with pytest.raises(ConversationOwnerError):
        await store.update(conversation, intruder, lambda s: s)

    state = await store.get(conversation, owner)
    assert state is not None and state.explicit_attempts == 1


async def test_transform_cannot_move_a_session(clients: Clients) -> None:
    store = SessionStore(clients[0])
    conversation, user = ids()

    def hijack(state: SessionState) -> SessionState:
        return msgspec.structs.replace(state, user_id=uuid.uuid4(), conversation_id=uuid.uuid4())

    state = await store.update(conversation, user, hijack)

    assert (state.conversation_id, state.user_id) == (conversation, user)


async def test_unreachable_redis_is_a_clear_error() -> None:
    client = Redis.from_url("unix:///nonexistent/redis.sock", socket_connect_timeout=0.5)
    store = SessionStore(client)
    try:
        with pytest.raises(SessionUnavailableError):
            await store.get_or_create(*ids())
    finally:
        await client.aclose()
