"""The benchmarks' streaming client (scripts/bench_client.py) on canned streams: what it
takes from OpenAI chunks and from companion turn events. No server: httpx's mock transport."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from script_modules import load_script

c = load_script("bench_client")


def answering(status: int, body: str) -> httpx.AsyncClient:
    """A client whose every request gets ``body`` back (SSE text) with ``status``."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text=body, headers={"content-type": "text/event-stream"})

    return httpx.AsyncClient(
        base_url="http://bench.test/v1", transport=httpx.MockTransport(handler)
    )


def chunks(*payloads: dict[str, Any] | str) -> str:
    return "".join(f"data: {p if isinstance(p, str) else json.dumps(p)}\n\n" for p in payloads)


def delta(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text}}]}


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_sse_events_name_each_data_line_until_a_blank_line() -> None:
    lines = ["event: token", 'data: {"text": "a"}', "", "data: [DONE]", ": keep-alive", ""]
    assert [e async for e in c.sse_events(_lines(*lines))] == [
        ("token", '{"text": "a"}'),
        ("", "[DONE]"),
    ]


async def test_a_chat_stream_gives_the_text_a_time_per_chunk_and_the_usage() -> None:
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    body = chunks(delta("Hel"), delta("lo"), {"choices": [], "usage": usage}, "[DONE]")
    async with answering(200, body) as client:
        sample = await c.stream_chat(client, {"model": "m"})
    assert sample.error is None
    assert sample.text == "Hello"
    assert len(sample.chunk_times) == 2 and sample.end_s >= sample.chunk_times[-1]
    assert (sample.prompt_tokens, sample.cached_tokens, sample.output_tokens) == (12, 8, 3)


async def test_llama_server_timings_stand_in_for_missing_usage() -> None:
    timings = {"prompt_n": 4, "cache_n": 10, "predicted_n": 2}
    body = chunks(delta("a"), delta("b"), {"choices": [], "timings": timings}, "[DONE]")
    async with answering(200, body) as client:
        sample = await c.stream_chat(client, {})
    assert (sample.prompt_tokens, sample.cached_tokens, sample.output_tokens) == (14, 10, 2)


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (503, "busy", "HTTP 503: busy"),
        (200, chunks({"error": {"message": "boom"}}), "stream error: {'message': 'boom'}"),
        (200, chunks("[DONE]"), "no content streamed"),
        (200, "data: {not json\n\n", "JSONDecodeError"),
    ],
)
async def test_a_failed_chat_stream_is_an_error_never_a_raise(
    status: int, body: str, error: str
) -> None:
    async with answering(status, body) as client:
        sample = await c.stream_chat(client, {})
    assert sample.error is not None and sample.error.startswith(error)


def turn_events(*events: tuple[str, dict[str, Any]]) -> str:
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)


@pytest.mark.parametrize(
    ("events", "check"),
    [
        (
            [("meta", {}), ("token", {"text": "Hi"}), ("token", {"text": "!"}),
             ("done", {"timings": {"engine_ttft_s": 0.1}})],
            lambda s: s.error is None and s.output_tokens == 2
            and s.extra["steps"] == {"engine_ttft_s": 0.1},
        ),
        (
            [("meta", {}), ("token", {"text": "Hi"})],
            lambda s: s.error == "stream ended without a done event",
        ),
    ],
)  # fmt: skip
async def test_a_companion_turn_counts_token_events_and_keeps_the_done_timings(
    events: list[tuple[str, dict[str, Any]]], check: Callable[[Any], bool]
) -> None:
    async with answering(200, turn_events(*events)) as client:
        sample = await c.stream_turn(client, "/conversations/x/messages", {}, "hello")
    assert check(sample), sample


def test_chat_body_is_greedy_exact_length_and_takes_extra_keys() -> None:
    messages = [c.Message("user", "hi")]
    body = c.chat_body("m", messages, 16, user="u1", cache_prompt=True)
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert (body["max_tokens"], body["temperature"], body["ignore_eos"]) == (16, 0, True)
    assert (body["user"], body["cache_prompt"]) == ("u1", True)
