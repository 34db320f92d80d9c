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
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import COMPANION, free_port, serving, stream_turn, without_databases
from bench_harness import (
    LoadRun,
    LoadShape,
    RequestRecord,
    Sample,
    distribution,
    parse_slos,
    run_load,
    summarize,
)
from bench_lib import user_messages
from bench_report import Column, format_table, machine_info, write_json


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
    tpot_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    held_s: float = 0.0  # --rate: waited for the user's previous turn past its due time
    error: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # the done event's timings

    @property
    def overhead_s(self) -> float | None:
        """What the service adds before the first token (from the send, not the due time)."""
        if self.ttft_s is None or self.engine_ttft_s is None:
            return None
        return self.ttft_s - self.held_s - self.engine_ttft_s


@dataclass
class Run:
    concurrency: int
    load: LoadRun
    turns: list[Turn] = field(default_factory=list)
    wall_s: float = 0.0


async def sign_up(client: httpx.AsyncClient) -> dict[str, str]:
    credentials = {"username": f"bench{uuid.uuid4().hex[:10]}", "password": "benchmark secret!"}
    (await client.post("/auth/register", json=credentials)).raise_for_status()
    login = await client.post("/auth/login", json=credentials)
    login.raise_for_status()
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


class User:
    """One simulated user: signs up and opens a conversation (untimed), then sends turns."""

    def __init__(self, client: httpx.AsyncClient, index: int, turns: int) -> None:
        self.client, self.index, self.turns = client, index, turns
        self.messages = user_messages(index, turns)
        self.url = ""
        self.headers: dict[str, str] = {}
        self.setup_error: str | None = None

    async def prepare(self) -> None:
        try:
            headers = await sign_up(self.client)
            created = await self.client.post("/conversations", json={}, headers=headers)
            created.raise_for_status()
        except httpx.HTTPError as exc:
            self.setup_error = f"setup: {exc}"
            return
        self.url = f"/conversations/{created.json()['id']}/messages"
        self.headers = {**headers, "Accept": "text/event-stream"}

    async def request(self, turn: int) -> Sample:
        if self.setup_error is not None:
            return Sample(error=self.setup_error)
        return await stream_turn(self.client, self.url, self.headers, self.messages[turn])


def to_turn(r: RequestRecord) -> Turn:
    steps = r.extra.get("steps") or {}
    return Turn(
        user=r.session,
        turn=r.turn - 1,
        ok=r.ok,
        ttft_s=r.ttft_s,
        engine_ttft_s=steps.get("engine_ttft_s"),
        server_overhead_s=steps.get("overhead_s"),
        e2e_s=r.e2e_s,
        tokens=r.output_tokens,
        tpot_s=r.tpot_s,
        itl_s=r.itl_s,
        held_s=r.held_s,
        error=r.error,
        steps=steps,
    )


async def run_level(
    base_url: str,
    concurrency: int,
    turns: int,
    rate: float | None = None,
    seed: int = 0,
    ramp_s: float = 0.0,
) -> Run:
    """``concurrency`` users at once (fixed shape; starting over ``ramp_s`` seconds), or
    their turns sent at ``rate``/s (Poisson)."""
    if rate:
        shape = LoadShape("poisson", rate, seed)
    else:
        shape = LoadShape("fixed", concurrency, ramp_s=ramp_s)
    limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=f"{base_url}/api/v1", timeout=600, limits=limits
    ) as client:
        users = [User(client, u, turns) for u in range(concurrency)]
        load = await run_load(shape, users, f"{concurrency} users")
    return Run(concurrency, load, [to_turn(r) for r in load.records], load.wall_s)


def summarize_run(run: Run, slos: dict[str, float] | None = None) -> dict[str, Any]:
    """The harness's summary in this script's names (milliseconds, one decimal), with the
    engine's TTFT, the overhead between the two and the server's own steps added."""
    base = summarize(run.load, slos or {})
    ok = [t for t in run.turns if t.ok]
    tokens_per_s = base["output_throughput_tok_s"]
    summary: dict[str, Any] = {
        "concurrency": run.concurrency,
        "turns": base["requests"],
        "errors": base["errors"],
        "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 1),
    }
    columns = {
        "ttft": base["ttft_s"],
        "engine_ttft": distribution(t.engine_ttft_s for t in ok),
        "overhead": distribution(t.overhead_s for t in ok),
        "server_overhead": distribution(t.server_overhead_s for t in ok),
        "tpot": base["tpot_s"],
        "itl": base["itl_s"],
        "e2e": base["e2e_s"],
    }
    for name, quantiles in columns.items():
        for q in (50, 95, 99):
            summary[f"{name}_p{q}_ms"] = _ms(quantiles[f"p{q}"])
    summary["load"] = base["load"]
    summary["goodput"] = base["goodput"]
    steps = sorted({name for t in ok for name in t.steps})
    summary["server_steps_ms"] = {name.removesuffix("_s"): _step(ok, name) for name in steps}
    summary["first_errors"] = base["first_errors"]
    return summary


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _step(turns: list[Turn], name: str) -> list[float | None]:
    """p50 and p95 of one server step, in milliseconds."""
    quantiles = distribution(t.steps.get(name) for t in turns)
    return [_ms(quantiles["p50"]), _ms(quantiles["p95"])]


COLUMNS: tuple[Column, ...] = (
    ("users", "concurrency", ""),
    ("turns", "turns", ""),
    ("errors", "errors", ""),
    ("tok/s", "tokens_per_s", ""),
    ("ttft p50/p95 ms", "ttft_p50_ms/ttft_p95_ms", ""),
    ("engine ttft p50/p95", "engine_ttft_p50_ms/engine_ttft_p95_ms", ""),
    ("overhead p50/p95", "overhead_p50_ms/overhead_p95_ms", ""),
    ("(server-side)", "server_overhead_p50_ms/server_overhead_p95_ms", ""),
    ("e2e p50/p95 ms", "e2e_p50_ms/e2e_p95_ms", ""),
)


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


@contextmanager
def local_server(extra_env: dict[str, str]) -> Iterator[str]:
    """``companion serve`` on a fresh data dir; its base URL until the block ends."""
    with tempfile.TemporaryDirectory(prefix="bench-chat-") as directory:
        env = without_databases(os.environ) | {
            "COMPANION_DATA_DIR": directory,
            "COMPANION_LOG_LEVEL": "warning",
            "COMPANION_RATE_LIMITS": "false",
            "COMPANION_MEMORY_WORKER": "inprocess",
            **extra_env,
        }
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [*COMPANION, "serve", "--port", str(port)]
        with serving(command, env, f"{base}/health/ready", None, timeout_s=300):
            yield base


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
    parser.add_argument(
        "--rate",
        type=float,
        help="Poisson arrivals at this many turns/s instead of every user at once",
    )
    parser.add_argument(
        "--slo", action="append", default=[], help="METRIC=SECONDS goodput target (ttft/tpot/...)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--rate schedule seed")
    parser.add_argument(
        "--ramp",
        type=float,
        default=0.0,
        help="start the users one after another over this many seconds (0: all at once)",
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    try:
        slos = parse_slos(args.slo)
    except ValueError as exc:
        parser.error(str(exc))

    def measure(base_url: str) -> list[Run]:
        if args.warmup:
            asyncio.run(run_level(base_url, args.warmup, 1))
        return [
            asyncio.run(run_level(base_url, c, args.turns, args.rate, args.seed, args.ramp))
            for c in args.concurrency
        ]

    if args.base_url:
        runs = measure(args.base_url.rstrip("/"))
    else:
        with local_server(extra) as base_url:
            runs = measure(base_url)
    summaries = [summarize_run(run, slos) for run in runs]
    print(format_table(summaries, COLUMNS, left=0))
    for s in summaries:
        good = s["goodput"]
        print(
            f"  {s['concurrency']} users ({s['load']}), tpot p50/p95 ms "
            f"{s['tpot_p50_ms']}/{s['tpot_p95_ms']}, itl p50/p99 ms "
            f"{s['itl_p50_ms']}/{s['itl_p99_ms']}, goodput {good['goodput_req_s']:.2f} turns/s "
            f"({good['good_requests']}/{s['turns']} within {slos or 'no targets'})"
        )
    for s in summaries:
        steps = ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in s["server_steps_ms"].items())
        print(f"  {s['concurrency']} users, server steps p50/p95 ms: {steps}")
    for s in summaries:
        for error in s["first_errors"]:
            print(f"  {s['concurrency']} users, error: {error}")
    if args.json:
        document = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info() | {"loadavg": os.getloadavg()},
            "slos_s": slos,
            "summaries": summaries,
            "turns": {str(run.concurrency): [asdict(t) for t in run.turns] for run in runs},
        }
        write_json(args.json, document)
    if args.png:
        draw_png(args.png, summaries)


if __name__ == "__main__":
    main()
