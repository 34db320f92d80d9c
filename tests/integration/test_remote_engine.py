"""The remote engine against real upstreams: two instances of this server on real ports,
and scripted upstreams on real ports that answer with whatever bytes a test gives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import Served, Upstream, free_port
from litestar import Litestar, post
from litestar.response import Stream

from inference.config import ChatEngineConfig
from inference.engines.remote import RemoteConfig, RemoteEngine
from inference.errors import EngineUnavailable
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    Usage,
)
from server.settings import Settings


@pytest.fixture
def upstreams(settings: Settings, tiny_gguf: Path) -> Iterator[list[Upstream]]:
    engine = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)
    local = dataclasses.replace(settings, chat_engine=engine, api_keys_required=False)
    servers = [Upstream(local), Upstream(local)]
    for server in servers:
        server.start()
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
async def remote(upstreams: list[Upstream]) -> AsyncIterator[RemoteEngine]:
    engine = RemoteEngine(RemoteConfig("tiny", tuple(u.base_url for u in upstreams), down_for_s=60))
    await engine.start()
    yield engine
    await engine.close()


def turn(conversation: str, *messages: str, max_tokens: int = 12) -> GenerationRequest:
    roles = ["user", "assistant"]
    history = [ChatMessage("system", "You are a warm companion.")] + [
        ChatMessage(roles[i % 2], text)  # type: ignore[arg-type]
        for i, text in enumerate(messages)
    ]
    return GenerationRequest(
        request_id=f"{conversation}-{len(messages)}-{time.monotonic_ns()}",
        user_id="alice",
        conversation_id=conversation,
        messages=history,
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens),
    )


async def ask(engine: RemoteEngine, request: GenerationRequest) -> tuple[str, Finished]:
    parts: list[str] = []
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("no Finished event")


async def test_conversation_returns_to_its_replica_and_fails_over(
    remote: RemoteEngine, upstreams: list[Upstream]
) -> None:
    # Keep replica 0 busy so the conversation starts on replica 1.
    busy = remote.generate(turn("other", "Tell me a long story.", max_tokens=1500))
    assert isinstance(await anext(busy), TextDelta)
    reply, first = await ask(remote, turn("c1", "I adopted a cat called Miso."))
    await busy.aclose()

    # Both replicas idle now: only affinity sends the next turn back to replica 1,
    # the one holding the conversation's prefix.
    _, second = await ask(remote, turn("c1", "I adopted a cat called Miso.", reply, "She naps."))
    assert second.usage.cached_prompt_tokens >= first.usage.prompt_tokens

    upstreams[1].stop()
    _, third = await ask(remote, turn("c1", "I adopted a cat called Miso.", reply, "Later."))
    assert third.usage.completion_tokens > 0  # served by replica 0 instead
    assert third.usage.cached_prompt_tokens < first.usage.prompt_tokens  # it had no prefix


async def test_a_dead_replica_is_skipped_and_all_dead_is_an_error(
    upstreams: list[Upstream],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    engine = RemoteEngine(RemoteConfig("tiny", (dead, upstreams[0].base_url)))
    await engine.start()
    try:
        _, finished = await ask(engine, turn("c2", "Hello?"))
        assert finished.usage.completion_tokens > 0
        await engine.health()
    finally:
        await engine.close()

    nobody = RemoteEngine(RemoteConfig("tiny", (dead,)))
    await nobody.start()
    try:
        with pytest.raises(EngineUnavailable):
            await ask(nobody, turn("c3", "Anyone there?"))
        with pytest.raises(EngineUnavailable):
            await nobody.health()
    finally:
        await nobody.close()


async def test_abort_stops_the_stream(remote: RemoteEngine) -> None:
    request = turn("c4", "Talk for a long time.", max_tokens=1500)
    stream = remote.generate(request)
    await anext(stream)
    await remote.abort(request.request_id)
    events = [event async for event in stream]
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.finish_reason == "abort"
    await asyncio.sleep(0)
    assert remote.stats().running == 0


async def test_aborts_leave_nothing_behind(remote: RemoteEngine) -> None:
    """Aborting ids that are unknown or already finished used to grow a set forever
    (the hardening review's finding 12); the set is internal, hence the peek."""
    for i in range(50):
        await remote.abort(f"never-sent-{i}")
    done = turn("c6", "Hello!", max_tokens=4)
    await ask(remote, done)
    await remote.abort(done.request_id)
    running = turn("c7", "Talk for a long time.", max_tokens=1500)
    stream = remote.generate(running)
    await anext(stream)
    await remote.abort(running.request_id)
    assert [e async for e in stream][-1].finish_reason == "abort"  # type: ignore[union-attr]
    assert remote._counters.aborted == set() and remote._counters.in_flight == set()


async def test_upstream_metrics_are_polled_into_stats(upstreams: list[Upstream]) -> None:
    config = RemoteConfig(
        "tiny", (upstreams[0].base_url,), metrics_prefix="companion", metrics_every_s=0.2
    )
    engine = RemoteEngine(config)
    await engine.start()
    try:
        await ask(engine, turn("c5", "Hello there, how are you?"))
        deadline = time.monotonic() + 10  # the upstream publishes its stats every second
        load = None
        while time.monotonic() < deadline:
            load = engine.loads()[0]
            if load is not None and load.prefix_queries > 0:
                break
            await asyncio.sleep(0.2)
        assert load is not None and load.prefix_queries > 0
        assert 0.0 <= load.kv_usage <= 1.0
        assert engine.stats().reported_kv_usage == load.kv_usage
    finally:
        await engine.close()


# --- scripted upstreams: the event-stream reading itself


class Scripted:
    """An upstream that answers every chat completion with the same raw bytes."""

    def __init__(self, body: bytes, media_type: str) -> None:
        @post("/v1/chat/completions", sync_to_thread=False)
        def chat() -> Stream:
            return Stream(_pieces(body), media_type=media_type)

        self.served = Served(Litestar([chat]))


async def _pieces(body: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(body), 7):  # lines and events arrive split across writes
        yield body[start : start + 7]


@contextlib.asynccontextmanager
async def scripted(
    body: bytes, media_type: str = "text/event-stream"
) -> AsyncIterator[tuple[RemoteEngine, str]]:
    """An engine whose only replica is a scripted upstream; the replica's URL."""
    upstream = Scripted(body, media_type)
    upstream.served.start()
    engine = RemoteEngine(RemoteConfig("m", (upstream.served.base_url,)))
    await engine.start()
    try:
        yield engine, upstream.served.base_url
    finally:
        await engine.close()
        upstream.served.stop()


async def test_multi_line_data_and_comments_are_read_up_to_done() -> None:
    body = (
        b": keep-alive\n\n"
        b'data: {"choices": [{"index": 0,\n'
        b'data:  "delta": {"content": "Hel"}}]}\n\n'
        b": ping\r\n\r\n"
        b'id: 2\ndata:{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}\r\n\r\n'
        b"\n"  # a lone blank line after an id: no event
        b'data: {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2,\n'
        b'data: "prompt_tokens_details": {"cached_tokens": 3}}}\n\n'
        b"data: [DONE]\n\n"
        b'data: {"choices": [{"delta": {"content": " and more"}}]}\n\n'
    )
    async with scripted(body) as (engine, _):
        reply, finished = await ask(engine, turn("sse", "Hi"))
    assert reply == "Hello"
    assert finished.finish_reason == "stop"
    assert finished.usage == Usage(prompt_tokens=5, cached_prompt_tokens=3, completion_tokens=2)


_HELLO = b'data: {"choices": [{"delta": {"content": "Hello"}}]}\n\n'


@pytest.mark.parametrize(
    ("body", "media_type", "says"),
    [
        pytest.param(b"data: Hello there\n\n", "text/event-stream", "malformed", id="not-json"),
        pytest.param(_HELLO + b"data: {oops}\n\n", "text/event-stream", "malformed", id="late"),
        pytest.param(b"data: [1, 2]\n\n", "text/event-stream", "malformed", id="not-an-object"),
        pytest.param(
            b'data: {"id": "c1", "object": "chat.completion.chunk"}\n\n',
            "text/event-stream",
            "choices",
            id="no-choices",
        ),
        pytest.param(
            b'data: {"choices": [{"delta": {"content": 7}}]}\n\n',
            "text/event-stream",
            "malformed",
            id="content-not-text",
        ),
        pytest.param(
            b'data: {"choices": [], "usage": {"prompt_tokens": "five"}}\n\n',
            "text/event-stream",
            "malformed",
            id="usage-not-numbers",
        ),
        pytest.param(
            _HELLO + b'data: {"error": {"message": "the GPU fell over"}}\n\n',
            "text/event-stream",
            "the GPU fell over",
            id="error-chunk",
        ),
        pytest.param(
            b'{"choices": [{"message": {"content": "Hello"}}]}',
            "application/json",
            "text/event-stream",
            id="not-an-event-stream",
        ),
    ],
)
async def test_a_malformed_reply_is_an_engine_error_naming_the_replica(
    body: bytes, media_type: str, says: str
) -> None:
    async with scripted(body, media_type) as (engine, url):
        with pytest.raises(EngineUnavailable) as failed:
            await ask(engine, turn("bad", "Hi"))
        assert url in str(failed.value)
        assert says in str(failed.value)
        assert engine.stats().running == 0
