"""Erasing a user leaves nothing of them in Redis or in the engine's caches (issue 16,
finding 10): idempotency records, response-cache entries and memory jobs were left for
hours, and the engine kept the KV of their prompts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from inference.engine import Engine
from inference.factory import create_engine
from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams
from memory.accounts import AccountStore

MARKER = "zebrafinch"


async def values(redis: Redis, key: bytes) -> bytes:
    """Everything a key holds, as bytes, whatever its type."""
    kind = (await redis.type(key)).decode()
    parts: list[Any] = []
    if kind == "string":
        parts = [await redis.get(key)]
    elif kind == "list":
        parts = await redis.lrange(key, 0, -1)
    elif kind == "hash":
        parts = [b for pair in (await redis.hgetall(key)).items() for b in pair]
    elif kind == "set":
        parts = list(await redis.smembers(key))
    elif kind == "zset":
        parts = await redis.zrange(key, 0, -1)
    return b"\x00".join(p for p in parts if p)


async def traces(redis: Redis, *names: str) -> list[str]:
    """Keys whose name or contents hold any of ``names``."""
    found = []
    async for key in redis.scan_iter():
        held = key + b"\x00" + await values(redis, key)
        if any(name.encode() in held for name in names):
            found.append(key.decode(errors="replace"))
    return found


async def test_erase_leaves_no_trace_in_redis_or_the_engine(
    chat_client: AsyncTestClient[Litestar], pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    # earlier tests' apps are gone, but jobs they queued in this shared Redis are not: the
    # worker here would spend the test's time on them
    async for stale in shared_redis.scan_iter(match="saq:*companion-memory*"):
        await shared_redis.delete(stale)
    headers = await signed_in(chat_client)
    me = (await chat_client.get("/api/v1/me", headers=headers)).json()
    user_id, username = me["id"], me["username"]
    key = {"Authorization": f"Bearer {(await AccountStore(pool).create_key(username)).key}"}
    created = await chat_client.post("/api/v1/conversations", json={}, headers=headers)
    conversation_id = created.json()["id"]
    url = f"/api/v1/conversations/{conversation_id}/messages"
    turn = await chat_client.post(
        url,
        json={"content": f"My bird is called {MARKER}."},
        headers={**headers, "Idempotency-Key": "turn-1"},
    )
    assert turn.status_code == 200, turn.text
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Say {MARKER}."}],
        "temperature": 0,
        "max_tokens": 4,
    }
    assert (await chat_client.post("/v1/chat/completions", json=body, headers=key)).is_success
    assert await traces(shared_redis, user_id, conversation_id, MARKER)  # it was all there
    await _jobs_settled(shared_redis, conversation_id)

    erased = await chat_client.delete("/api/v1/me", headers=headers)
    assert erased.status_code == 204, erased.text
    assert await traces(shared_redis, user_id, conversation_id, MARKER) == []


async def _jobs_settled(redis: Redis, conversation_id: str) -> None:
    """Wait for the memory worker to finish this conversation's jobs: one still running
    when the erasure comes is told to abort, but may finish first and store its record
    again (a limit the note of issue 16 names)."""
    deadline = time.monotonic() + 60
    while True:
        waiting = [
            job
            for name in ("queued", "active")
            for job in await redis.lrange(f"saq:companion-memory:{name}", 0, -1)
            if conversation_id.encode() in job
        ]
        if not waiting:
            return
        assert time.monotonic() < deadline, f"memory jobs never finished: {waiting}"
        await asyncio.sleep(0.2)


@pytest.fixture(params=["inline", "separate"])
async def engine(request: pytest.FixtureRequest, tiny_gguf: Path) -> AsyncIterator[Engine]:
    """The llama.cpp engine, in this process and in its own (the service's default)."""
    config = ChatEngineConfig(
        model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=2, process=request.param
    )
    opened = create_engine(config)
    assert opened is not None
    await opened.start()
    yield opened
    await opened.close()


async def cached(engine: Engine, user: str, text: str) -> int:
    """The prompt tokens the engine reused for ``user``'s request (a user's own KV)."""
    request = GenerationRequest(
        request_id=uuid.uuid4().hex,
        user_id=user,
        messages=[ChatMessage("system", "You are kind. " * 20), ChatMessage("user", text)],
        sampling=SamplingParams(max_tokens=2, temperature=0),
    )
    async for event in engine.generate(request):
        if isinstance(event, Finished):
            return event.usage.cached_prompt_tokens
    raise AssertionError("no Finished event")


async def test_the_engine_forgets_a_users_kv_in_slots_and_host_ram(engine: Engine) -> None:
    await cached(engine, "ann", "I keep bees.")
    await cached(engine, "bob/device-1", "I sail.")  # an OpenAI caller's end user
    assert await cached(engine, "ann", "I keep bees.") > 0  # her own slot
    await cached(engine, "cal", "I paint.")  # two slots: bob's idle KV goes to host RAM
    await engine.forget("bob")
    await engine.forget("ann")
    assert await cached(engine, "ann", "I keep bees.") == 0
    assert await cached(engine, "bob/device-1", "I sail.") == 0
    assert await cached(engine, "cal", "I paint.") > 0  # the others keep theirs
