#!/usr/bin/env python3
"""Smoke a running `companion serve`: many short chats on its model; did it stay up?

Against a server that is already running (its base URL and an API key), sends:

- ``--requests`` streamed ``/v1/chat/completions`` (``--max-tokens`` each, a
  different message each so the response cache cannot answer them);
- ``--turns`` companion turns over ``/api/v1`` (SSE, as the web UI sends them):
  up to ``--concurrency`` users sign up, open a conversation with
  ``--persona`` and take the turns between them, one turn at a time each.

``--concurrency`` requests run at once. A request counts as an error unless it
answered 200, streamed some text and finished (a ``finish_reason``, or the
turn's ``done`` event). Latency is from sending the request to its last event.

Before and after, it asks ``/health/ready``, and with ``--pid`` (the
``companion serve`` process id) it reads ``/proc`` for that process and for
its engine processes (``inference.engines.process.worker``, children or
grandchildren with several workers): a crashed engine is restarted under a new
id, so the same ids before and after mean it stayed up.

The server's rate limits count: ``COMPANION_RATE_LIMITS=false`` on the server,
or the per-user limit (60/minute by default) turns some requests into 429s.

    .venv/bin/python scripts/smoke_serve.py http://127.0.0.1:8000 sk-cmp-... \\
        --pid "$(pgrep -of 'companion serve')" --out artifacts/smoke_serve.json

The exit status is 1 when a request failed or a process did not stay up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import percentile
from bench_report import machine_info, write_json

ENGINE_MODULE = b"inference.engines.process.worker"
V1, TURN = "/v1 chat", "companion turn"
TOPICS = (
    "my cat Miso",
    "a walk by the river",
    "the book I am reading",
    "dinner tonight",
    "my sister's new job",
    "learning the guitar",
    "a rainy Sunday",
    "the exam next week",
)


@dataclass
class Outcome:
    kind: str
    index: int
    ok: bool = False
    latency_s: float | None = None
    ttft_s: float | None = None
    pieces: int = 0  # streamed text chunks (tokens, roughly)
    finish: str | None = None
    model: str | None = None
    text: str = ""
    error: str | None = None


@dataclass
class Processes:
    """What /health/ready and /proc said at one moment."""

    ready: int | str
    server_up: bool | None = None  # None: no --pid given
    engine_pids: list[int] = field(default_factory=list)


def message(index: int) -> str:
    topic = TOPICS[index % len(TOPICS)]
    return f"Hi! (#{index}) Tell me something nice about {topic}."


# --- /v1


async def v1_chat(client: httpx.AsyncClient, model: str, index: int, max_tokens: int) -> Outcome:
    """One streamed chat completion; never raises."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": message(index)}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    outcome, started = Outcome(V1, index), time.perf_counter()
    parts: list[str] = []
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                outcome.error = await _status_error(response)
                return outcome
            async for line in response.aiter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    _feed_chunk(outcome, parts, json.loads(line[5:]), started)
    except (httpx.HTTPError, ValueError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    return _finished(outcome, parts, started)


def _feed_chunk(outcome: Outcome, parts: list[str], chunk: dict[str, Any], started: float) -> None:
    if "error" in chunk:
        outcome.error = f"stream error: {chunk['error']}"
        return
    outcome.model = chunk.get("model", outcome.model)
    for choice in chunk.get("choices") or ():
        content = (choice.get("delta") or {}).get("content")
        if content:
            _piece(outcome, parts, content, started)
        outcome.finish = choice.get("finish_reason") or outcome.finish


# --- /api/v1


class User:
    """A user of the companion API with one conversation; takes turns one at a time."""

    def __init__(self, client: httpx.AsyncClient, persona: str) -> None:
        self.client, self.persona = client, persona
        self.url = ""
        self.headers: dict[str, str] = {}
        self.setup_error: str | None = None

    async def sign_up(self) -> None:
        credentials = {"username": f"smoke{uuid.uuid4().hex[:10]}", "password": "smoke test secret"}
        try:
            (await self.client.post("/api/v1/auth/register", json=credentials)).raise_for_status()
            login = await self.client.post("/api/v1/auth/login", json=credentials)
            login.raise_for_status()
            self.headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            created = await self.client.post(
                "/api/v1/conversations", json={"persona": self.persona}, headers=self.headers
            )
            created.raise_for_status()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self.setup_error = f"sign-up: {type(exc).__name__}: {exc}"
            return
        self.url = f"/api/v1/conversations/{created.json()['id']}/messages"
        self.headers["Accept"] = "text/event-stream"

    async def turn(self, index: int) -> Outcome:
        """One turn over SSE; never raises."""
        if self.setup_error is not None:
            return Outcome(TURN, index, error=self.setup_error)
        outcome, started = Outcome(TURN, index), time.perf_counter()
        parts: list[str] = []
        body = {"content": message(index)}
        try:
            async with self.client.stream(
                "POST", self.url, json=body, headers=self.headers
            ) as response:
                if response.status_code != 200:
                    outcome.error = await _status_error(response)
                    return outcome
                event = ""
                async for line in response.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        _feed_event(outcome, parts, event, json.loads(line[6:]), started)
        except (httpx.HTTPError, ValueError) as exc:
            outcome.error = f"{type(exc).__name__}: {exc}"
        return _finished(outcome, parts, started)


def _feed_event(
    outcome: Outcome, parts: list[str], event: str, data: dict[str, Any], started: float
) -> None:
    if event == "meta":
        outcome.model = data.get("model")
    elif event == "token":
        _piece(outcome, parts, str(data.get("text", "")), started)
    elif event == "done":
        outcome.finish = "done"
    elif event == "error":
        outcome.error = f"stream error: {data}"


# --- both


def _piece(outcome: Outcome, parts: list[str], text: str, started: float) -> None:
    if outcome.ttft_s is None:
        outcome.ttft_s = time.perf_counter() - started
    outcome.pieces += 1
    parts.append(text)


def _finished(outcome: Outcome, parts: list[str], started: float) -> Outcome:
    outcome.latency_s = time.perf_counter() - started
    outcome.text = "".join(parts)
    if outcome.error is None and not outcome.text.strip():
        outcome.error = "no text streamed"
    elif outcome.error is None and outcome.finish is None:
        outcome.error = "the stream ended before it finished"
    outcome.ok = outcome.error is None
    return outcome


async def _status_error(response: httpx.Response) -> str:
    detail = (await response.aread()).decode(errors="replace")[:200]
    return f"HTTP {response.status_code}: {detail}"


async def run_pool(
    count: int, concurrency: int, work: Callable[[int, int], Awaitable[Outcome]]
) -> list[Outcome]:
    """``work(worker, index)`` for every index, ``concurrency`` workers taking them in turn."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    outcomes: list[Outcome] = []

    async def worker(number: int) -> None:
        while not queue.empty():
            outcomes.append(await work(number, queue.get_nowait()))

    await asyncio.gather(*(worker(n) for n in range(min(concurrency, count))))
    return sorted(outcomes, key=lambda o: o.index)


async def served_model(client: httpx.AsyncClient) -> str:
    """The first chat model the server lists: the one it has loaded (the default)."""
    listed = (await client.get("/v1/models")).raise_for_status().json()["data"]
    chat = [str(m["id"]) for m in listed if "minilm" not in str(m["id"]).lower()]
    return chat[0] if chat else str(listed[0]["id"])


@dataclass
class Phase:
    kind: str
    outcomes: list[Outcome]
    wall_s: float


async def timed(kind: str, outcomes: Awaitable[list[Outcome]]) -> Phase:
    started = time.perf_counter()
    done = await outcomes
    return Phase(kind, done, time.perf_counter() - started)


async def smoke(args: argparse.Namespace) -> tuple[str, list[Phase]]:
    """The /v1 requests, then the companion turns; the model the /v1 requests named."""
    headers = {"Authorization": f"Bearer {args.key}"}
    limits = httpx.Limits(max_connections=args.concurrency + 4)
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    async with httpx.AsyncClient(
        base_url=args.base_url, headers=headers, timeout=timeout, limits=limits
    ) as client:
        model = args.model or await served_model(client)
        v1 = await timed(
            V1,
            run_pool(
                args.requests,
                args.concurrency,
                lambda _, i: v1_chat(client, model, i, args.max_tokens),
            ),
        )
        users = [User(client, args.persona) for _ in range(min(args.concurrency, args.turns))]
        await asyncio.gather(*(u.sign_up() for u in users))
        turns = await timed(
            TURN, run_pool(args.turns, args.concurrency, lambda n, i: users[n].turn(i))
        )
    return model, [v1, turns]


# --- the processes


def look(base_url: str, pid: int | None) -> Processes:
    try:
        ready: int | str = httpx.get(f"{base_url}/health/ready", timeout=10).status_code
    except httpx.HTTPError as exc:
        ready = type(exc).__name__
    if pid is None:
        return Processes(ready)
    return Processes(ready, alive(pid), sorted(engine_pids(pid)))


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def engine_pids(pid: int) -> set[int]:
    """Engine processes among ``pid``'s descendants (uvicorn workers start their own)."""
    found: set[int] = set()
    for child in children(pid):
        with contextlib.suppress(OSError):  # it may end while we look (the repack probe)
            if ENGINE_MODULE in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        found |= engine_pids(child)
    return found


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            pids += [int(p) for p in listing.read_text().split()]
    return pids


# --- the report


def summarize(phase: Phase) -> dict[str, Any]:
    outcomes = phase.outcomes
    ok = [o for o in outcomes if o.ok]

    def ms(values: list[float | None], q: float) -> float | None:
        value = percentile([v for v in values if v is not None], q)
        return None if value is None else round(value * 1000, 1)

    return {
        "kind": phase.kind,
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "latency_p50_ms": ms([o.latency_s for o in ok], 50),
        "latency_p95_ms": ms([o.latency_s for o in ok], 95),
        "ttft_p50_ms": ms([o.ttft_s for o in ok], 50),
        "pieces_mean": round(sum(o.pieces for o in ok) / len(ok), 1) if ok else None,
        "models": sorted({o.model for o in outcomes if o.model}),
        "wall_s": round(phase.wall_s, 2),
        "first_errors": [f"#{o.index}: {o.error}" for o in outcomes if not o.ok][:3],
    }


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    header = "kind             requests  errors  latency p50/p95 ms  ttft p50 ms  pieces  wall s"
    lines = [header, "-" * len(header)]
    for s in summaries:
        latency = f"{s['latency_p50_ms']}/{s['latency_p95_ms']}"
        lines.append(
            f"{s['kind']:<15}  {s['requests']:>8}  {s['errors']:>6}  {latency:>18}  "
            f"{s['ttft_p50_ms']!s:>11}  {s['pieces_mean']!s:>6}  {s['wall_s']:>6}"
        )
    return "\n".join(lines)


def stayed_up(before: Processes, after: Processes) -> bool:
    if after.ready != 200:
        return False
    if after.server_up is None:
        return True  # nothing more is known without --pid
    # a restarted engine has a new id; none at all: the engine runs inline (chat_process)
    return bool(after.server_up) and after.engine_pids == before.engine_pids


def process_lines(pid: int | None, before: Processes, after: Processes) -> list[str]:
    lines = [f"/health/ready: {before.ready} before, {after.ready} after"]
    if pid is not None:
        word = {True: "up", False: "gone"}
        lines.append(
            f"server pid {pid}: {word[bool(before.server_up)]} before, "
            f"{word[bool(after.server_up)]} after"
        )
        lines.append(f"engine pids: {before.engine_pids} before, {after.engine_pids} after")
    verdict = "stayed up" if stayed_up(before, after) else "did NOT stay up"
    lines.append(f"server and engine: {verdict}")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base_url", help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("key", help="an API key for /v1 (companion keys create USER)")
    p.add_argument("--requests", type=int, default=100, help="/v1 chat requests")
    p.add_argument("--turns", type=int, default=20, help="companion turns")
    p.add_argument("--concurrency", type=int, default=4, help="requests at once")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens per /v1 reply")
    p.add_argument("--model", help="/v1 model (default: the first chat model listed)")
    p.add_argument("--persona", default="companion", help="persona of the conversations")
    p.add_argument("--pid", type=int, help="the `companion serve` process id")
    p.add_argument("--request-timeout", type=float, default=300)
    p.add_argument("--out", type=Path, help="write the results here as JSON")
    args = p.parse_args(argv)
    args.base_url = args.base_url.rstrip("/").removesuffix("/v1")
    if args.concurrency < 1:
        p.error("--concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    before = look(args.base_url, args.pid)
    started = time.perf_counter()
    try:
        model, phases = asyncio.run(smoke(args))
    except httpx.HTTPError as exc:  # listing the models failed: nothing was sent
        raise SystemExit(f"{args.base_url}: {type(exc).__name__}: {exc}") from None
    wall_s = time.perf_counter() - started
    after = look(args.base_url, args.pid)
    summaries = [summarize(phase) for phase in phases]
    print(f"model {model} at {args.base_url}, {args.concurrency} at a time")
    print(format_table(summaries))
    for line in process_lines(args.pid, before, after):
        print(line)
    for s in summaries:
        for error in s["first_errors"]:
            print(f"  {s['kind']} {error}")
    if args.out:
        document = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]).replace(args.key, "***"),
            "machine": machine_info() | {"loadavg": os.getloadavg()},
            "base_url": args.base_url,
            "model": model,
            "settings": {k: v for k, v in vars(args).items() if k not in ("key", "out")},
            "summaries": summaries,
            "processes": {"pid": args.pid, "before": asdict(before), "after": asdict(after)},
            "stayed_up": stayed_up(before, after),
            "wall_s": round(wall_s, 2),
            "requests": [asdict(o) for phase in phases for o in phase.outcomes],
        }
        write_json(args.out, document)
    failed = any(s["errors"] for s in summaries) or not stayed_up(before, after)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
