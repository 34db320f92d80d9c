"""Rate limits over HTTP: per user, per address, per route group, shared by instances, 429s."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from memory.accounts import AccountStore
from server.app import create_app
from server.settings import RateLimit, Settings


@pytest.fixture
async def limited(settings: Settings, shared_redis: Redis) -> Settings:
    """Limits on, small enough to reach, with this Redis's counters cleared."""
    async for key in shared_redis.scan_iter(match="companion:rl*"):
        await shared_redis.delete(key)
    return dataclasses.replace(
        settings,
        rate_limits=True,
        rate_limit_user=RateLimit(3, 60),
        rate_limit_ip=RateLimit(100, 60),
        rate_limit_routes={"auth": RateLimit(6, 60), "v1": RateLimit(2, 60)},
    )


@pytest.fixture
async def client(limited: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(limited)) as test_client:
        yield test_client


async def login(client: AsyncTestClient[Litestar]) -> dict[str, str]:
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_user_limit_gives_429_with_retry_after_and_changes_nothing(
    client: AsyncTestClient[Litestar],
) -> None:
    alice, bob = await login(client), await login(client)
    for _ in range(3):
        created = await client.post("/api/v1/conversations", json={}, headers=alice)
        assert created.status_code == 201
    refused = await client.post("/api/v1/conversations", json={}, headers=alice)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Bob has his own window; Alice's refused request created nothing
    listed = await client.get("/api/v1/conversations", headers=bob)
    assert listed.status_code == 200 and listed.json() == []
    assert (await client.get("/api/v1/conversations", headers=bob)).status_code == 200


async def test_login_attempts_are_limited_per_address(client: AsyncTestClient[Litestar]) -> None:
    await login(client)  # two of the six auth hits
    wrong = {"username": "nobody", "password": "not the password"}
    statuses = [(await client.post("/api/v1/auth/login", json=wrong)).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 401, 429]


async def test_v1_limit_speaks_openai(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/v1/models")).status_code == 200
    assert (await client.get("/v1/models")).status_code == 200
    refused = await client.get("/v1/models")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1


async def test_two_instances_share_the_count(limited: Settings) -> None:
    async with (
        AsyncTestClient(create_app(limited)) as one,
        AsyncTestClient(create_app(limited)) as two,
    ):
        headers = await login(one)
        statuses = []
        for client in (one, two, one, two):
            statuses.append(
                (await client.get("/api/v1/conversations", headers=headers)).status_code
            )
        assert statuses == [200, 200, 200, 429]


async def test_limits_can_be_turned_off(limited: Settings) -> None:
    unlimited = dataclasses.replace(limited, rate_limits=False)
    async with AsyncTestClient(create_app(unlimited)) as client:
        headers = await login(client)
        for _ in range(5):
            assert (await client.get("/api/v1/conversations", headers=headers)).status_code == 200


async def test_v1_auth_errors_speak_openai(limited: Settings) -> None:
    keyed = dataclasses.replace(limited, rate_limits=False, api_keys_required=True)
    async with AsyncTestClient(create_app(keyed)) as client:
        refused = await client.get("/v1/models", headers={"Authorization": "Bearer sk-cmp-nope"})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "invalid_api_key"


def test_every_route_that_knows_its_caller_has_a_limit(limited: Settings) -> None:
    """Routes that resolve a caller (user, key or admin) name a rate-limit group; the
    profile, status, admin and stats routes had none (issue 16, finding 9)."""
    app = create_app(limited)
    unlimited = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            names = set(handler.resolve_dependencies())
            if names & {"user", "caller", "admin"} and not handler.opt.get("rate_limit"):
                unlimited.append(f"{sorted(handler.http_methods)} {route.path}")
    assert unlimited == []


@pytest.mark.parametrize("path", ["/api/v1/me/profile", "/api/v1/models"])
async def test_profile_and_status_are_limited(client: AsyncTestClient[Litestar], path: str) -> None:
    alice = await login(client)
    statuses = [(await client.get(path, headers=alice)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_admin_routes_are_limited(limited: Settings, pool: asyncpg.Pool) -> None:
    keyed = dataclasses.replace(limited, rate_limit_routes={"admin": RateLimit(2, 60)})
    key = (await AccountStore(pool).create_key("root", admin=True)).key
    async with AsyncTestClient(create_app(keyed)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [
            (await client.get(path, headers=headers)).status_code
            for path in ("/api/v1/admin/keys", "/api/v1/admin/stats", "/api/v1/admin/keys")
        ]
        assert statuses == [200, 200, 429]
