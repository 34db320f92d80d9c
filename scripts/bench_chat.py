#!/usr/bin/env python3
"""Benchmark the companion chat turn over HTTP: C concurrent users, full turns, SSE.

Each simulated user registers, logs in, opens a conversation and sends
``--turns`` messages one after another over the SSE endpoint, as the web UI
does. For every turn it records, client-side:

- ``ttft``: from sending the POST to the first ``token`` event;
- ``engine_ttft``: the engine's own time to first token, from the ``done``
  event (submission to first token inside the engine);
- ``overhead``: ttft - engine_ttft, everything the service adds before the
  first token (HTTP, auth, rate limit, session and history, classifiers,
  memory retrieval, routing, storing the message, prompt building, SSE);
- ``e2e``: to the ``done`` event.

Without ``--base-url`` it starts ``companion serve`` itself on a temporary data
directory (embedded PostgreSQL and Redis, the default packaged chat model,
rate limits off so the load is not refused), and stops it afterwards.

    python scripts/bench_chat.py --concurrency 8 64 --turns 3 \\
        --json artifacts/bench_chat.json --png artifacts/bench_chat.png

Targets (issue #7, 2-core CPU, default model): overhead p50 < 30 ms and p95 <
80 ms at 8 users; no errors at 64 concurrent streams.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lib import machine_info, percentile, progress_bar, user_messages, write_json

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]


@dataclass
class Turn:
    user: int
    turn: int
    ok: bool
    ttft_s: float | None = None
    engine_ttft_s: float | None = None
    server_overhead_s: float | None = None
    e2e_s: float | None = None
    tokens: int = 0
    error: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # the done event's timings

    @property
    def overhead_s(self) -> float | None:
        if self.ttft_s is None or self.engine_ttft_s is None:
            return None
        return self.ttft_s - self.engine_ttft_s


@dataclass
class Run:
    concurrency: int
    turns: list[Turn] = field(default_factory=list)
    wall_s: float = 0.0


async def sign_up(client: httpx.AsyncClient) -> dict[str, str]:
    credentials = {"username": f"bench{uuid.uuid4().hex[:10]}", "password": "benchmark secret!"}
    (await client.post("/auth/register", json=credentials)).raise_for_status()
    login = await client.post("/auth/login", json=credentials)
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


async def one_turn(
    client: httpx.AsyncClient, url: str, headers: dict[str, str], text: str, user: int, turn: int
) -> Turn:
    record = Turn(user, turn, ok=False)
    started = time.perf_counter()
    event = ""
    try:
        async with client.stream("POST", url, json={"content": text}, headers=headers) as response:
            if response.status_code != 200:
                record.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return record
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    if event == "token":
                        record.tokens += 1
                        if record.ttft_s is None:
                            record.ttft_s = time.perf_counter() - started
                    elif event == "done":
                        timings = json.loads(line[6:])["timings"]
                        record.steps = timings
                        record.engine_ttft_s = timings.get("engine_ttft_s")
                        record.server_overhead_s = timings.get("overhead_s")
                        record.ok = True
                    elif event == "error":
                        record.error = line[6:]
        record.e2e_s = time.perf_counter() - started
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def simulate_user(
    client: httpx.AsyncClient, user: int, turns: int, results: list[Turn], bar: Any
) -> None:
    try:
        headers = await sign_up(client)
        created = await client.post("/conversations", json={}, headers=headers)
        created.raise_for_status()
    except httpx.HTTPError as exc:
        results.extend(Turn(user, t, ok=False, error=f"setup: {exc}") for t in range(turns))
        bar.update(turns)
        return
    url = f"/conversations/{created.json()['id']}/messages"
    stream = {**headers, "Accept": "text/event-stream"}
    for turn, text in enumerate(user_messages(user, turns)):
        results.append(await one_turn(client, url, stream, text, user, turn))
        bar.update()


async def run_level(base_url: str, concurrency: int, turns: int) -> Run:
    run = Run(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    bar = progress_bar(concurrency * turns, f"{concurrency} users")
    async with httpx.AsyncClient(
        base_url=f"{base_url}/api/v1", timeout=600, limits=limits
    ) as client:
        started = time.perf_counter()
        await asyncio.gather(
            *(simulate_user(client, u, turns, run.turns, bar) for u in range(concurrency))
        )
        run.wall_s = time.perf_counter() - started
    bar.close()
    return run


def summarize(run: Run) -> dict[str, Any]:
    ok = [t for t in run.turns if t.ok]

    def pct(values: list[float | None], q: float) -> float | None:
        value = percentile([v for v in values if v is not None], q)
        return None if value is None else round(value * 1000, 1)

    columns = {
        "ttft": [t.ttft_s for t in ok],
        "engine_ttft": [t.engine_ttft_s for t in ok],
        "overhead": [t.overhead_s for t in ok],
        "server_overhead": [t.server_overhead_s for t in ok],
        "e2e": [t.e2e_s for t in ok],
    }
    summary: dict[str, Any] = {
        "concurrency": run.concurrency,
        "turns": len(run.turns),
        "errors": len(run.turns) - len(ok),
        "tokens_per_s": round(sum(t.tokens for t in ok) / run.wall_s, 1) if run.wall_s else None,
    }
    for name, values in columns.items():
        summary[f"{name}_p50_ms"] = pct(values, 50)
        summary[f"{name}_p95_ms"] = pct(values, 95)
    steps = sorted({name for t in ok for name in t.steps})
    summary["server_steps_ms"] = {
        name.removesuffix("_s"): [pct([t.steps.get(name) for t in ok], q) for q in (50, 95)]
        for name in steps
    }
    summary["first_errors"] = [t.error for t in run.turns if not t.ok][:3]
    return summary


def format_table(summaries: list[dict[str, Any]]) -> str:
    header = (
        "users  turns  errors  tok/s   ttft p50/p95 ms    engine ttft p50/p95   "
        "overhead p50/p95   (server-side)      e2e p50/p95 ms"
    )
    lines = [header, "-" * len(header)]
    for s in summaries:

        def pair(name: str, s: dict[str, Any] = s) -> str:
            return f"{s[f'{name}_p50_ms']}/{s[f'{name}_p95_ms']}"

        lines.append(
            f"{s['concurrency']:>5}  {s['turns']:>5}  {s['errors']:>6}  {s['tokens_per_s']!s:>5}   "
            f"{pair('ttft'):>17}   {pair('engine_ttft'):>19}   {pair('overhead'):>16}   "
            f"{pair('server_overhead'):>16}   {pair('e2e'):>16}"
        )
    return "\n".join(lines)


def draw_png(path: Path, summaries: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [str(s["concurrency"]) for s in summaries]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.2
    for i, (name, label) in enumerate(
        [("ttft", "TTFT (client)"), ("engine_ttft", "engine TTFT"), ("overhead", "overhead")]
    ):
        for q, alpha in (("p50", 1.0), ("p95", 0.45)):
            values = [s[f"{name}_{q}_ms"] or 0 for s in summaries]
            xs = [x + (i - 1) * width for x in range(len(levels))]
            ax.bar(xs, values, width, alpha=alpha, color=f"C{i}", label=f"{label} {q}")
    ax.set_xticks(range(len(levels)), [f"{lvl} users" for lvl in levels])
    ax.set_ylabel("milliseconds")
    ax.set_yscale("log")
    ax.set_title("Companion chat turn: time to first token and service overhead")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def local_server(extra_env: dict[str, str]) -> Iterator[str]:
    """``companion serve`` on a fresh data dir; its base URL until the block ends."""
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as directory:
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env |= {
            "COMPANION_DATA_DIR": directory,
            "COMPANION_LOG_LEVEL": "warning",
            "COMPANION_RATE_LIMITS": "false",
            "COMPANION_MEMORY_WORKER": "inprocess",
            **extra_env,
        }
        port = free_port()
        process = subprocess.Popen([*COMPANION, "serve", "--port", str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise SystemExit("companion serve exited before it was ready")
                try:
                    if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            yield base
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="a running server (default: start one)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--turns", type=int, default=3, help="turns per user")
    parser.add_argument("--warmup", type=int, default=2, help="users in an unrecorded warm-up")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--png", type=Path, help="draw the results here")
    parser.add_argument(
        "--env", action="append", default=[], help="KEY=VALUE for the started server"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)

    def measure(base_url: str) -> list[Run]:
        if args.warmup:
            asyncio.run(run_level(base_url, args.warmup, 1))
        return [asyncio.run(run_level(base_url, c, args.turns)) for c in args.concurrency]

    if args.base_url:
        runs = measure(args.base_url.rstrip("/"))
    else:
        with local_server(extra) as base_url:
            runs = measure(base_url)
    summaries = [summarize(run) for run in runs]
    print(format_table(summaries))
    for s in summaries:
        steps = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in s["server_steps_ms"].items())
        print(f"  {s['concurrency']} users, server steps p50/p95 ms: {steps}")
    for s in summaries:
        for error in s["first_errors"]:
            print(f"  {s['concurrency']} users, error: {error}")
    if args.json:
        document = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info(),
            "summaries": summaries,
            "turns": {str(run.concurrency): [asdict(t) for t in run.turns] for run in runs},
        }
        write_json(args.json, document)
    if args.png:
        draw_png(args.png, summaries)


if __name__ == "__main__":
    main()
