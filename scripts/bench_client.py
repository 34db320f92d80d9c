"""The one streaming client of the benchmarks, and the servers they start.

Each way of asking for a reply streams it into the harness's `Sample`
(scripts/bench_harness.py), timed here, on the client, from the moment the
request leaves to every piece of content:

- `stream_chat`: an OpenAI-compatible ``/chat/completions`` stream (this
  service's ``/v1``, llama-server, vLLM); `OpenAIChat` sends a bench_lib
  conversation with it;
- `stream_turn`: a companion turn over ``/api/v1`` (``event: token`` ... ``done``);
- `stream_engine`: an in-process `Engine`'s ``generate`` (no HTTP at all).

The two HTTP ones read the same server-sent events (`sse_events`). A failure
is returned in ``Sample.error``, never raised, except by an engine.

`serving` starts a server process (``companion serve``, llama-server, vLLM),
waits until it answers and stops it afterwards; `llama_server_command` is the
one llama-server command line.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import Sample
from bench_lib import Conversation, Message

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]

# Takes one event of a stream into the sample: (sample, event name, data, seconds since
# sent). True ends the stream.
Take = Callable[[Sample, str, str, float], bool]


# --- server-sent events


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, str]]:
    """(event, data) for every ``data:`` line; the event is "" where the stream names
    none (OpenAI's chunks), and a blank line ends an event's name."""
    event = ""
    async for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            yield event, line[5:].strip()
        elif not line:
            event = ""


async def _post_stream(
    client: httpx.AsyncClient,
    url: str,
    body: Mapping[str, Any],
    take: Take,
    headers: Mapping[str, str] | None = None,
) -> Sample:
    """POST ``body`` and hand every event to ``take``; an HTTP error, a broken
    connection or undecodable data becomes the sample's error."""
    sample = Sample()
    started = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode(errors="replace")[:300]
                sample.error = f"HTTP {response.status_code}: {detail}"
            else:
                async for event, data in sse_events(response.aiter_lines()):
                    if take(sample, event, data, time.perf_counter() - started):
                        break
    except (httpx.HTTPError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    sample.end_s = time.perf_counter() - started
    return sample


# --- OpenAI chat completions


async def stream_chat(client: httpx.AsyncClient, body: Mapping[str, Any]) -> Sample:
    """POST a streaming chat completion and time every content chunk; never raises."""
    sample = await _post_stream(client, "/chat/completions", body, _take_chunk)
    if sample.error is None and not sample.chunk_times:
        sample.error = "no content streamed"
    return sample


def _take_chunk(sample: Sample, _event: str, data: str, now: float) -> bool:
    if data == "[DONE]":
        return True
    return feed_chunk(sample, json.loads(data), now)


def feed_chunk(sample: Sample, chunk: Mapping[str, Any], now: float) -> bool:
    """One parsed chunk into ``sample``; True when it carried an error. Token counts
    come from ``usage``, else from llama-server's ``timings``."""
    if "error" in chunk:
        sample.error = f"stream error: {chunk['error']}"
        return True
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            sample.chunk_times.append(now)
            sample.text += content
    usage = chunk.get("usage") or {}
    timings = chunk.get("timings") or {}  # llama-server: cache_n is the reused prompt tokens
    if usage or timings:
        _take_counts(sample, usage, timings)
    return False


def _take_counts(sample: Sample, usage: Mapping[str, Any], timings: Mapping[str, Any]) -> None:
    details = usage.get("prompt_tokens_details") or {}
    cached = details.get("cached_tokens", timings.get("cache_n"))
    prompt = usage.get("prompt_tokens")
    if prompt is None and "prompt_n" in timings:
        prompt = timings["prompt_n"] + timings.get("cache_n", 0)
    output = usage.get("completion_tokens", timings.get("predicted_n"))
    sample.cached_tokens = cached if cached is not None else sample.cached_tokens
    sample.prompt_tokens = prompt if prompt is not None else sample.prompt_tokens
    sample.output_tokens = output if output is not None else sample.output_tokens


def chat_body(
    model: str, messages: Sequence[Message], max_tokens: int, **extra: Any
) -> dict[str, Any]:
    """A greedy streamed chat completion of exactly ``max_tokens`` tokens (``ignore_eos``:
    llama.cpp, vLLM and this service accept it), usage in the last chunk."""
    return {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        **extra,
    }


@dataclass
class OpenAIChat:
    """Sends a bench_lib conversation's messages so far as one streamed chat completion
    (bench_lib.ConversationSession's ``send``)."""

    client: httpx.AsyncClient
    model: str
    max_tokens: int
    send_user: bool = False  # the conversation's user as ``user`` (this service keys its cache)
    extra: dict[str, Any] = field(default_factory=dict)  # more body keys (llama-server's)

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample:
        extra = dict(self.extra)
        if self.send_user:
            extra["user"] = conversation.user_id
        return await stream_chat(
            self.client, chat_body(self.model, messages, self.max_tokens, **extra)
        )


async def served_model(client: httpx.AsyncClient) -> str:
    """The first chat model the server lists (vLLM wants the exact name)."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        listed = (await client.get("/models")).json()["data"]
        ids = [str(m["id"]) for m in listed]
        chat = [i for i in ids if "minilm" not in i.lower() and "embed" not in i.lower()]
        if chat or ids:
            return (chat or ids)[0]
    return "default"


# --- the companion turn


async def stream_turn(
    client: httpx.AsyncClient, url: str, headers: Mapping[str, str], text: str
) -> Sample:
    """One companion turn over SSE, timed from the POST: every ``token`` event (one token
    each) and the ``done`` event, whose timings land in ``extra["steps"]``."""
    sample = await _post_stream(client, url, {"content": text}, _take_turn_event, headers)
    if sample.error is None and "steps" not in sample.extra:
        sample.error = "stream ended without a done event"
    sample.output_tokens = len(sample.chunk_times)
    return sample


def _take_turn_event(sample: Sample, event: str, data: str, now: float) -> bool:
    if event == "token":
        sample.chunk_times.append(now)
    elif event == "done":
        sample.extra["steps"] = json.loads(data)["timings"]
    elif event == "error":
        sample.error = data
    return False


# --- an engine in this process


async def stream_engine(engine: Any, request: Any) -> Sample:
    """``engine.generate(request)`` timed like a stream: a chunk per text delta, the
    token counts from its Finished event. The engine's errors are raised."""
    from inference.types import Finished, TextDelta

    sample = Sample()
    started = time.perf_counter()
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            sample.chunk_times.append(time.perf_counter() - started)
            sample.text += event.text
        elif isinstance(event, Finished):
            sample.output_tokens = event.usage.completion_tokens
            sample.prompt_tokens = event.usage.prompt_tokens
            sample.cached_tokens = event.usage.cached_prompt_tokens
    sample.end_s = time.perf_counter() - started
    return sample


# --- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_server_command(
    binary: Path, model: Path, ctx: int, slots: int, threads: int, port: int, *extra: str
) -> list[str]:
    """llama.cpp's server on ``model`` with one KV pool shared by all slots, like our
    engine: an explicit -np turns it off, and then each slot gets ctx/slots cells
    (1024 for 8192/8), too few for the later turns of the conversation workload."""
    if not binary.exists():
        raise SystemExit(f"{binary} not found: run scripts/build_llama_server.sh")
    return [
        str(binary),
        *("-m", str(model), "-c", str(ctx), "-np", str(slots)),
        *("-t", str(threads), "-tb", str(threads)),
        *("--host", "127.0.0.1", "--port", str(port), "--kv-unified"),
        *extra,
    ]


def without_databases(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` less DATABASE_URL and REDIS_URL, so ``companion serve`` embeds its own."""
    return {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL")}


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    env: Mapping[str, str],
    ready_url: str,
    log: Path | None,
    timeout_s: float,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` with ``env`` (the whole environment), its output in ``log`` (None:
    this terminal); wait until ``ready_url`` answers 200, then hand it over. When the
    block ends: SIGTERM, and SIGKILL if it has not stopped within two minutes."""
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(log.open("wb")) if log is not None else None
        process = subprocess.Popen(
            list(command), env=dict(env), stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=cwd
        )
        try:
            wait_ready(ready_url, process, log, timeout_s)
            yield process
        finally:
            stop(process)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path | None, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise SystemExit(f"{process.args!r} exited before it was ready:\n{tail}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f}s" + (f"; see {log}" if log else ""))


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
