"""Redis and PostgreSQL restarted under a running `companion serve`.

The server runs on its own PostgreSQL and Redis, which the tests stop and
start again (same data dirs: Redis replays its append-only file). While a
component is down a turn fails cleanly (a JSON error or an SSE ``error``
event, never a hang or a stack trace) and readiness says 503; once it is
back the same process serves again, and every acknowledged message is kept.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from sse_events import sse_events
from support import companion_env, serving

from memory.embedded import EmbeddedPostgres, EmbeddedRedis

pytestmark = pytest.mark.slow

RECOVERY_S = 60  # a guard while the service reconnects, not a timing assertion


@dataclass
class Stack:
    base_url: str
    process: subprocess.Popen[str]
    log: Path  # the server's stderr: a file, since a pipe nobody reads fills and blocks it
    postgres: EmbeddedPostgres
    redis: EmbeddedRedis


@pytest.fixture(scope="module")
def stack(tiny_gguf: Path) -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="cmpf-", dir="/tmp") as directory:
        root = Path(directory)
        postgres, redis = EmbeddedPostgres(root / "pg"), EmbeddedRedis(root / "redis")
        env = companion_env(
            root / "app",
            DATABASE_URL=postgres.start(),
            REDIS_URL=redis.start(),
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX="2048",
            COMPANION_CHAT_SLOTS="4",
            COMPANION_RATE_LIMITS="false",
            COMPANION_RESPONSE_CACHE_TTL="0",
        )
        log = root / "serve.log"
        try:
            with serving(env, log) as (base, process):
                yield Stack(base, process, log, postgres, redis)
        finally:
            redis.stop()
            postgres.stop()


def signed_up(api: httpx.Client) -> dict[str, str]:
    credentials = {"username": f"f{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert api.post("/auth/register", json=credentials).status_code == 201
    token = api.post("/auth/login", json=credentials).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def wait_status(base_url: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_S
    while True:
        response = httpx.get(f"{base_url}/health/ready", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.25)


def assert_clean_failure(response: httpx.Response) -> None:
    """An error the client can act on: a JSON error status, or an SSE stream ending in error."""
    if response.status_code == 200:
        events = sse_events(response.text)
        assert events and events[-1][0] == "error", response.text
        return
    assert response.status_code in (502, 503, 504), response.text
    error = response.json()["error"]
    assert error["code"] and error["message"] and "Traceback" not in response.text


class Conversation(NamedTuple):
    """A signed-up user's conversation with one turn done: what the faults must not lose."""

    api: httpx.Client
    auth: dict[str, str]
    stream: dict[str, str]
    url: str
    acknowledged: list[dict[str, Any]]


def one_turn_in(stack: Stack) -> Conversation:
    api = httpx.Client(base_url=f"{stack.base_url}/api/v1", timeout=120)
    auth = signed_up(api)
    stream = {**auth, "Accept": "text/event-stream"}
    conversation = api.post("/conversations", json={}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    first = api.post(url, json={"content": "Hi, I'm Sam."}, headers=stream)
    assert sse_events(first.text)[-1][0] == "done", first.text
    acknowledged = api.get(url, headers=auth).json()
    assert [m["role"] for m in acknowledged] == ["user", "assistant"]
    return Conversation(api, auth, stream, url, acknowledged)


def test_redis_restarted_mid_conversation(stack: Stack) -> None:
    api, auth, stream, url, acknowledged = one_turn_in(stack)

    stack.redis.stop()
    assert wait_status(stack.base_url, 503).json()["components"]["redis"]["status"] == "down"
    for headers in (auth, stream):
        assert_clean_failure(api.post(url, json={"content": "Still there?"}, headers=headers))

    stack.redis.start()  # same data dir: the append-only file is replayed
    assert wait_status(stack.base_url, 200).status_code == 200
    again = api.post(url, json={"content": "I like tea."}, headers=stream)
    assert sse_events(again.text)[-1][0] == "done", again.text

    history = api.get(url, headers=auth).json()
    kept = {m["id"]: m["content"] for m in history}
    assert all(kept.get(m["id"]) == m["content"] for m in acknowledged)
    assert history[-2]["content"] == "I like tea." and history[-1]["role"] == "assistant"
    assert "unhandled error" not in stack.log.read_text()  # no 500 with a stack trace


def test_postgres_restarted_readiness_goes_503_and_back(stack: Stack) -> None:
    assert wait_status(stack.base_url, 200).status_code == 200
    api, auth, stream, url, acknowledged = one_turn_in(stack)
    stack.postgres.stop()
    try:
        down = wait_status(stack.base_url, 503)
        assert down.status_code == 503
        components = down.json()["components"]
        assert components["database"]["status"] == "down"
        assert components["redis"]["status"] == "up"
        # turns during the outage: a clean, retryable failure (never a 500)
        for headers in (auth, stream):
            failed = api.post(url, json={"content": "Still there?"}, headers=headers)
            assert_clean_failure(failed)
            if failed.status_code == 503:
                assert failed.headers["Retry-After"]
        assert_clean_failure(api.get(url, headers=auth))
    finally:
        stack.postgres.start()
    assert wait_status(stack.base_url, 200).status_code == 200
    api = httpx.Client(base_url=f"{stack.base_url}/api/v1", timeout=120)
    again = api.post(url, json={"content": "I like tea."}, headers=stream)
    assert sse_events(again.text)[-1][0] == "done", again.text
    kept = {m["id"]: m["content"] for m in api.get(url, headers=auth).json()}
    assert all(kept.get(m["id"]) == m["content"] for m in acknowledged)
    assert signed_up(api)  # the pool serves again: new connections after the restart
    assert "unhandled error" not in stack.log.read_text()
