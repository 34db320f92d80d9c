"""One user cannot starve the others (issue 16, finding 8), on a real server (uvicorn) and
the packaged model, whose decode is slow enough here to hold a request open:

- a cap on each user's generation requests in progress, shared through Redis;
- a non-streamed request whose client goes away is aborted, not generated to the end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import httpx
import pytest
from helpers import Served
from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from memory.accounts import AccountStore
from server.app import create_app
from server.settings import Settings

MODEL = ChatEngineConfig().model_id
LONG = {"max_tokens": 1000, "ignore_eos": True, "temperature": 0.8}


@pytest.fixture
async def server(settings: Settings, shared_redis: Redis) -> AsyncIterator[Served]:
    async for key in shared_redis.scan_iter(match="companion:inflight*"):
        await shared_redis.delete(key)
    engine = ChatEngineConfig(n_ctx=2048, n_slots=4)  # the packaged model
    capped = dataclasses.replace(
        settings, chat_engine=engine, api_keys_required=True, max_concurrent_per_user=2
    )
    running = Served(create_app(capped))
    await asyncio.to_thread(running.start)
    yield running
    await asyncio.to_thread(running.stop)


async def key_headers(pool: asyncpg.Pool, name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {(await AccountStore(pool).create_key(name)).key}"}


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


async def test_a_user_past_the_cap_waits_and_the_others_do_not(
    server: Served, pool: asyncpg.Pool
) -> None:
    alice, bob = await key_headers(pool, "alice"), await key_headers(pool, "bob")
    url = f"{server.base_url}/chat/completions"
    async with httpx.AsyncClient(timeout=60) as client:
        streams = [
            client.stream(
                "POST", url, json=chat("Tell me a story.", stream=True, **LONG), headers=alice
            )
            for _ in range(2)
        ]
        opened = [await stream.__aenter__() for stream in streams]
        # held, not dropped: a dropped line iterator closes its response when collected
        lines = [response.aiter_lines() for response in opened]
        for response, read in zip(opened, lines, strict=True):  # both are generating
            assert response.status_code == 200
            await anext(read)

        third = await client.post(url, json=chat("Hi", max_tokens=2), headers=alice)
        assert third.status_code == 429, third.text
        assert third.headers["retry-after"] == "1"
        assert third.json()["error"]["code"] == "too_many_in_progress"
        other = await client.post(url, json=chat("Hi", max_tokens=2), headers=bob)
        assert other.status_code == 200, other.text  # bob has his own slots

        await streams[0].__aexit__(None, None, None)  # alice closes one: its slot comes back
        deadline = time.monotonic() + 30
        while (
            again := await client.post(url, json=chat("Hi", max_tokens=2), headers=alice)
        ).status_code == 429:
            assert time.monotonic() < deadline, "the closed stream kept its slot"
            await asyncio.sleep(0.2)
        assert again.status_code == 200, again.text
        await streams[1].__aexit__(None, None, None)


async def test_a_client_that_leaves_a_json_request_stops_its_generation(
    server: Served, pool: asyncpg.Pool
) -> None:
    alice = await key_headers(pool, "alice")
    engine = server.app.state.resources.engine
    before = engine.stats().generated_tokens
    body = json.dumps(chat("A long tale.", **LONG)).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: {alice['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    _, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(head.encode() + body)
    await writer.drain()
    await _until(lambda: engine.stats().generated_tokens > before, "it never started")
    writer.close()  # the client leaves while the JSON reply is being generated
    await writer.wait_closed()
    await _until(lambda: not (engine.stats().running or engine.stats().waiting), "it kept on")
    await asyncio.sleep(0.5)  # the engine process's last stats snapshot
    generated = engine.stats().generated_tokens - before
    assert 0 < generated < 500  # stopped: the whole reply is 1,000 tokens (~20 s here)


async def _until(condition: Callable[[], bool], why: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.05)
