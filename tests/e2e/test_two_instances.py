"""Two `companion serve` processes on one PostgreSQL and one Redis: one service, not two.

A session verified on one is verified on the other, rate limits add up across
both, and a conversation continues seamlessly when alternate requests hit
alternate instances (as behind a load balancer).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from support import companion_env, serving

from memory.embedded import EmbeddedPostgres, EmbeddedRedis


@pytest.fixture(scope="module")
def instances(tiny_gguf: Path) -> Iterator[list[str]]:
    with tempfile.TemporaryDirectory(prefix="cmp2-", dir="/tmp") as directory:
        root = Path(directory)
        postgres, redis = EmbeddedPostgres(root / "pg"), EmbeddedRedis(root / "redis")
        database_url, redis_url = postgres.start(), redis.start()
        try:
            with ExitStack() as servers:
                yield [
                    servers.enter_context(instance(root, name, tiny_gguf, database_url, redis_url))
                    for name in ("a", "b")
                ]
        finally:
            redis.stop()
            postgres.stop()


@contextmanager
def instance(
    root: Path, name: str, tiny_gguf: Path, database_url: str, redis_url: str
) -> Iterator[str]:
    """One instance on the shared servers; its base URL."""
    env = companion_env(
        root / name,
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        COMPANION_JWT_SECRET="one secret shared by every instance, 32+ bytes",
        COMPANION_CHAT_MODEL=str(tiny_gguf),
        COMPANION_CHAT_CTX="2048",
        COMPANION_CHAT_SLOTS="4",
        COMPANION_RATE_LIMIT_ROUTES="turn=100/minute,auth=100/minute,v1=3/minute",
    )
    with serving(env, root / f"{name}.log") as (base, _):
        yield base


def clients(urls: list[str]) -> list[httpx.Client]:
    return [httpx.Client(base_url=f"{url}/api/v1", timeout=120) for url in urls]


def sign_up(a: httpx.Client, b: httpx.Client) -> dict[str, str]:
    """Register on one instance, log in on the other."""
    credentials = {"username": f"lb{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert a.post("/auth/register", json=credentials).status_code == 201
    return {
        "Authorization": f"Bearer {b.post('/auth/login', json=credentials).json()['access_token']}"
    }


def test_a_conversation_alternates_between_instances(instances: list[str]) -> None:
    a, b = clients(instances)
    auth = sign_up(a, b)
    conversation = a.post("/conversations", json={}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    said = ["Hi, I'm Sam.", "I like tea.", "What do I like?"]
    for client, text in zip((a, b, a), said, strict=True):
        answered = client.post(url, json={"content": text}, headers=auth)
        assert answered.status_code == 200, answered.text
    for client in (a, b):
        history = client.get(url, headers=auth).json()
        assert [m["role"] for m in history] == ["user", "assistant"] * 3
        assert [m["content"] for m in history[::2]] == said


def test_age_verified_on_one_is_verified_on_the_other(instances: list[str]) -> None:
    a, b = clients(instances)
    auth = sign_up(a, b)
    conversation = b.post("/conversations", json={}, headers=auth).json()
    base = f"/conversations/{conversation['id']}"
    adult = f"{time.gmtime().tm_year - 30}-01-15"
    verified = a.post(f"{base}/verify-age", json={"date_of_birth": adult}, headers=auth)
    assert verified.json() == {"verified": True}
    meta = b.post(f"{base}/messages", json={"content": "Talk dirty to me."}, headers=auth).json()
    assert meta["meta"]["route"] == "explicit" and meta["meta"]["needs_verification"] is False


def test_rate_limits_add_up_across_instances(instances: list[str]) -> None:
    a, b = (httpx.Client(base_url=url, timeout=30) for url in instances)
    statuses = [client.get("/v1/models").status_code for client in (a, b, a, b)]
    assert statuses == [200, 200, 200, 429]
    assert int(b.get("/v1/models").headers["retry-after"]) >= 1
