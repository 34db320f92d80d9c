"""200 concurrent SSE clients held on one server, then all gone: their KV is freed.

The clients stream `/v1/chat/completions` (long replies: ``ignore_eos``) from
a `companion serve` on the tiny model with a few slots and a queue deep
enough for everyone. Once the engine holds every request (running or
waiting), the clients disconnect at once; the engine must then report
nothing running or waiting and no KV cells held by running sequences.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import companion_env, serving

pytestmark = pytest.mark.slow

CLIENTS = 200
SLOTS = 8
MAX_TOKENS = 1500
WAIT_S = 120  # guards (all requests admitted, all freed), not timing assertions


@pytest.fixture(scope="module")
def base_url(tiny_gguf: Path) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cmpl-", dir="/tmp") as directory:
        root = Path(directory)
        env = companion_env(
            root,
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX=str(SLOTS * 2048),
            COMPANION_CHAT_SLOTS=str(SLOTS),
            COMPANION_CHAT_MAX_WAITING=str(CLIENTS * 2),
            COMPANION_RATE_LIMITS="false",
            COMPANION_RESPONSE_CACHE_TTL="0",
            COMPANION_SSE_KEEPALIVE="5",
        )
        with serving(env, root / "serve.log") as (base, _):
            yield base


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    """The engine gauges of /metrics, summed over models."""
    names = ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")
    values = dict.fromkeys(names, 0.0)
    for line in (await client.get("/metrics")).text.splitlines():
        for name in names:
            if line.startswith(f"companion:{name}{{"):
                values[name] += float(line.rsplit(" ", 1)[1])
    return values


async def hold(client: httpx.AsyncClient, model: str, index: int) -> None:
    """One client: stream a long reply and read it until cancelled (the disconnect)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Client {index}: tell me a long story."}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for _ in response.aiter_lines():
            pass


async def test_disconnected_sse_clients_free_their_kv(base_url: str) -> None:
    limits = httpx.Limits(max_connections=CLIENTS + 10, max_keepalive_connections=0)
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=WAIT_S * 2, limits=limits) as clients,
        httpx.AsyncClient(base_url=base_url, timeout=30) as probe,
    ):
        model = (await probe.get("/v1/models")).json()["data"][0]["id"]
        tasks = [asyncio.create_task(hold(clients, model, i)) for i in range(CLIENTS)]
        deadline = time.monotonic() + WAIT_S
        held = await gauges(probe)
        while time.monotonic() < deadline and not any(t.done() for t in tasks):
            held = await gauges(probe)
            # every request in the engine, and every slot busy (the engine process's
            # snapshot may lag the requests sent to it by a step)
            everyone = held["num_requests_running"] + held["num_requests_waiting"] >= CLIENTS
            if everyone and held["num_requests_running"] == SLOTS:
                break
            await asyncio.sleep(0.5)
        finished = [t for t in tasks if t.done()]
        for task in tasks:
            task.cancel()  # every client goes away at once
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not finished, [t.exception() for t in finished[:3]]
        assert held["num_requests_running"] == SLOTS
        assert held["num_requests_running"] + held["num_requests_waiting"] >= CLIENTS
        assert held["kv_cache_usage_perc"] > 0

        deadline = time.monotonic() + WAIT_S
        after = await gauges(probe)
        while time.monotonic() < deadline and any(after.values()):
            await asyncio.sleep(0.5)
            after = await gauges(probe)
        assert after == dict.fromkeys(after, 0.0)
        assert (await probe.get("/health/ready")).status_code == 200
