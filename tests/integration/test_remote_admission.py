"""Admission in the remote engine: refuse at once when every replica's KV cache is full.

The replicas are small vLLM look-alikes on real ports: ``/metrics`` in vLLM's
names with whatever load the test sets, and ``/v1/chat/completions`` streaming
a fixed reply (and counting the requests that reached it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers import Served
from litestar import Litestar, Request, get, post
from litestar.response import Stream
from litestar.testing import AsyncTestClient

from inference.config import ChatEngineConfig, RemoteOptions
from inference.engines.remote import RemoteConfig, RemoteEngine
from inference.errors import EngineOverloaded
from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams
from server.app import create_app
from server.settings import Settings


class FakeVllm:
    """What the remote engine reads and calls on a vLLM server, with a settable load."""

    def __init__(self) -> None:
        self.kv_usage, self.waiting, self.requests = 0.0, 0, 0

        @get("/metrics", media_type="text/plain", sync_to_thread=False)
        def metrics() -> str:
            return (
                f'vllm:kv_cache_usage_perc{{model_name="m"}} {self.kv_usage}\n'
                f'vllm:num_requests_waiting{{model_name="m"}} {self.waiting}\n'
                'vllm:num_requests_running{model_name="m"} 4\n'
            )

        @get("/v1/models", sync_to_thread=False)
        def models() -> dict[str, object]:
            return {"object": "list", "data": [{"id": "m", "object": "model"}]}

        @post("/v1/chat/completions")
        async def chat(request: Request[object, object, object]) -> Stream:
            await request.json()
            self.requests += 1
            return Stream(_reply(), media_type="text/event-stream")

        self.served = Served(Litestar([metrics, models, chat]))

    def full(self) -> None:
        self.kv_usage, self.waiting = 0.99, 20

    def roomy(self) -> None:
        self.kv_usage, self.waiting = 0.5, 0


async def _reply() -> AsyncIterator[bytes]:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    ]
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@pytest.fixture
def fakes() -> Iterator[list[FakeVllm]]:
    replicas = [FakeVllm(), FakeVllm()]
    for replica in replicas:
        replica.served.start()
    yield replicas
    for replica in replicas:
        replica.served.stop()


def turn() -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r-{time.monotonic_ns()}",
        user_id="alice",
        messages=[ChatMessage("user", "Hi")],
        sampling=SamplingParams(temperature=0, max_tokens=4),
    )


async def ask(engine: RemoteEngine) -> Finished:
    async for event in engine.generate(turn()):
        if isinstance(event, Finished):
            return event
    raise AssertionError("no Finished event")


async def polled(engine: RemoteEngine, kv_usages: list[float]) -> None:
    """Wait until the engine has read the load the replicas now report."""
    deadline = time.monotonic() + 30
    while [load.kv_usage if load else None for load in engine.loads()] != kv_usages:
        assert time.monotonic() < deadline, "metrics were not polled"
        await asyncio.sleep(0.02)


async def test_refused_only_when_every_replica_is_full(fakes: list[FakeVllm]) -> None:
    urls = tuple(fake.served.base_url for fake in fakes)
    engine = RemoteEngine(RemoteConfig("m", urls, flavor="vllm", metrics_every_s=0.05))
    await engine.start()
    try:
        fakes[0].full()
        await polled(engine, [0.99, 0.0])
        assert (await ask(engine)).usage.completion_tokens == 1  # the other has room
        assert [fake.requests for fake in fakes] == [0, 1]

        fakes[1].full()
        await polled(engine, [0.99, 0.99])
        with pytest.raises(EngineOverloaded) as refused:
            await ask(engine)
        assert refused.value.retry_after_s > 0
        assert [fake.requests for fake in fakes] == [0, 1]  # nothing was queued upstream

        fakes[1].waiting = 3  # full, but a short queue: still admitted
        fakes[0].roomy()
        await polled(engine, [0.5, 0.99])
        await ask(engine)
    finally:
        await engine.close()


async def test_openai_api_answers_503_with_retry_after(
    fakes: list[FakeVllm], settings: Settings
) -> None:
    for fake in fakes:
        fake.full()
    engine = ChatEngineConfig(
        backend="remote",
        model_id="m",
        remote=RemoteOptions(
            base_urls=tuple(fake.served.base_url for fake in fakes), flavor="vllm"
        ),
    )
    remote = dataclasses.replace(settings, chat_engine=engine, response_cache_ttl_s=0)
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    async with AsyncTestClient(create_app(remote), timeout=60) as client:
        deadline = time.monotonic() + 30
        # the first poll runs at start; until it is read, requests still go through
        while (reply := await client.post("/v1/chat/completions", json=body)).status_code == 200:
            assert time.monotonic() < deadline, "never refused"
            await asyncio.sleep(0.05)
    assert reply.status_code == 503, reply.text
    assert reply.headers["retry-after"] == "2"
    assert reply.json()["error"]["code"] == "overloaded"
