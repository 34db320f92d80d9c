#!/usr/bin/env python3
"""Can one user starve the others? A light user's time to first token, idle and under load.

This starts ``companion serve`` (bench_openai's ``--start companion``, on the packaged
SmolLM2 by default) with API keys required, so that two keys are two users, and
``COMPANION_MAX_CONCURRENT_PER_USER`` set to ``--cap`` when given (the server's
default otherwise; 0 is no cap). Then:

1. idle: the light user sends ``--requests`` short streaming chat completions, one
   after another, and times each one's first content token;
2. load: the heavy user opens ``--streams`` long streaming completions at once
   (``ignore_eos``, ``--max-tokens`` each) and counts those accepted (200) and
   refused (429, with Retry-After); ``--settle`` seconds later, while the accepted
   ones decode, the light user sends its short requests again. Closing the heavy
   streams afterwards aborts them on the server.

It prints light TTFT p50/max idle and loaded, their p50 ratio, and the heavy user's
accepted/refused counts, and writes them to ``--json`` with the command line, the
machine and the date.

    PYTHONPATH=. python scripts/bench_fairness.py --cap 4 --json docs/results/fairness.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import COMPANION, served_model, stream_chat
from bench_openai import started
from bench_report import machine_info, write_json

PERSONA = "You are Juniper, a warm and friendly companion. Keep replies short."
HEAVY_PROMPT = "Tell me a long, winding story about a lighthouse keeper and a storm."


@dataclass
class Heavy:
    """The heavy user's streams: HTTP status per stream (None: no answer yet)."""

    statuses: list[int | None]
    retry_after: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, Any]:
        accepted = sum(s == 200 for s in self.statuses)
        refused = sum(s == 429 for s in self.statuses)
        pending = sum(s is None for s in self.statuses)
        return {
            "streams": len(self.statuses),
            "accepted": accepted,
            "refused": refused,
            "other": len(self.statuses) - accepted - refused - pending,
            "no_answer_yet": pending,
            "retry_after": sorted(set(self.retry_after)),
            "errors": self.errors[:5],
        }


# --- the server


@contextlib.contextmanager
def environ(extra: dict[str, str]) -> Iterator[None]:
    """``extra`` in os.environ for the block: bench_openai's ``started`` adds only its own."""
    saved = {key: os.environ.get(key) for key in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def server_env(cap: int | None) -> dict[str, str]:
    env = {"COMPANION_API_KEYS_REQUIRED": "true", "COMPANION_RATE_LIMITS": "false"}
    if cap is not None:
        env["COMPANION_MAX_CONCURRENT_PER_USER"] = str(cap)
    return env


def create_key(username: str, env: dict[str, str]) -> str:
    """A key for ``username`` from ``companion keys create``, on the running server's data."""
    created = subprocess.run(
        [*COMPANION, "keys", "create", username],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if created.returncode != 0:
        raise SystemExit(f"companion keys create {username} failed:\n{created.stderr[-2000:]}")
    return created.stdout.strip()


# --- the client


def chat_body(model: str, user_text: str, max_tokens: int, *, heavy: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "messages": [
            {"role": "system", "content": PERSONA},
            {"role": "user", "content": user_text},
        ],
    }
    if heavy:
        body["ignore_eos"] = True
    return body


async def light_ttft(client: httpx.AsyncClient, body: dict[str, Any]) -> float:
    """Seconds from sending ``body`` to its first content token; the reply is read to the end."""
    sample = await stream_chat(client, body)
    if sample.error is not None:
        raise RuntimeError(f"light request: {sample.error}")
    return sample.chunk_times[0]


async def light_phase(
    client: httpx.AsyncClient, model: str, args: argparse.Namespace
) -> list[float]:
    """``--requests`` short requests, one after another: their TTFTs."""
    ttfts = []
    for i in range(args.requests):
        text = f"Hi Juniper! Say one kind thing to start my day ({time.time_ns()}-{i})."
        ttfts.append(await light_ttft(client, chat_body(model, text, 16, heavy=False)))
    return ttfts


async def heavy_stream(
    client: httpx.AsyncClient, body: dict[str, Any], heavy: Heavy, index: int
) -> None:
    """One heavy stream: its status into ``heavy``, then read until done or cancelled."""
    try:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            heavy.statuses[index] = response.status_code
            if response.status_code == 429:
                heavy.retry_after.append(response.headers.get("retry-after", "(none)"))
            async for _ in response.aiter_lines():
                pass
    except httpx.HTTPError as exc:
        heavy.errors.append(f"{type(exc).__name__}: {exc}")


def summary(ttfts: Sequence[float]) -> dict[str, Any]:
    return {
        "ttft_p50_s": round(statistics.median(ttfts), 4),
        "ttft_max_s": round(max(ttfts), 4),
        "ttft_each_s": [round(t, 4) for t in ttfts],
    }


def make_client(base_url: str, key: str, connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=httpx.Timeout(600, connect=10),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )


async def measure(base_url: str, keys: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    async with (
        make_client(base_url, keys["light"], 4) as light,
        make_client(base_url, keys["heavy"], args.streams + 4) as heavy_client,
    ):
        model = await served_model(light)
        for _ in range(args.warmup):  # first-call costs, unrecorded
            await light_ttft(light, chat_body(model, "Hello, warm-up!", 8, heavy=False))
        idle = await light_phase(light, model, args)
        heavy = Heavy(statuses=[None] * args.streams)
        body = chat_body(model, HEAVY_PROMPT, args.max_tokens, heavy=True)
        tasks = [
            asyncio.create_task(heavy_stream(heavy_client, body, heavy, i))
            for i in range(args.streams)
        ]
        try:
            await asyncio.sleep(args.settle)
            loaded = await light_phase(light, model, args)
            counts = heavy.counts()  # before the cancel below closes them
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"model": model, "idle": summary(idle), "loaded": summary(loaded), "heavy": counts}


# --- the run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=int, help="COMPANION_MAX_CONCURRENT_PER_USER (default: unset)")
    p.add_argument("--requests", type=int, default=5, help="light requests per phase")
    p.add_argument("--streams", type=int, default=60, help="heavy concurrent streams")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens per heavy reply")
    p.add_argument("--settle", type=float, default=3.0, help="seconds heavy streams run first")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded light requests")
    p.add_argument("--model", type=Path, help="GGUF to serve (default: packaged SmolLM2)")
    p.add_argument("--slots", type=int, default=8, help="COMPANION_CHAT_SLOTS")
    p.add_argument("--ctx", type=int, default=8192, help="COMPANION_CHAT_CTX (all slots)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--json", type=Path, default=Path("docs/results/fairness.json"))
    args = p.parse_args(argv)
    if args.requests < 1 or args.streams < 1:
        p.error("--requests and --streams must be at least 1")
    return args


def report(document: dict[str, Any]) -> None:
    idle, loaded, heavy = document["idle"], document["loaded"], document["heavy"]
    cap, ratio = document["cap"], document["ratio_p50"]
    rows = [
        ("cap (per user)", "server default" if cap is None else str(cap)),
        ("idle TTFT p50 / max (s)", f"{idle['ttft_p50_s']:.3f} / {idle['ttft_max_s']:.3f}"),
        ("loaded TTFT p50 / max (s)", f"{loaded['ttft_p50_s']:.3f} / {loaded['ttft_max_s']:.3f}"),
        ("loaded / idle p50", f"{ratio:.2f}x" if ratio is not None else "n/a"),
        ("heavy accepted / refused", f"{heavy['accepted']} / {heavy['refused']}"),
    ]
    if heavy["other"] or heavy["no_answer_yet"]:
        rows.append(("heavy other / no answer", f"{heavy['other']} / {heavy['no_answer_yet']}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.model
    if model is None:
        from models.packaged import packaged_path

        model = packaged_path("chat")
    extra = server_env(args.cap)
    with environ(extra), started("companion", args, model, {}) as how:
        print(f"companion: {how['base_url']} (log {how['log']})", file=sys.stderr)
        env = how["env"] | extra
        keys = {name: create_key(name, env) for name in ("heavy", "light")}
        measured = asyncio.run(measure(how["base_url"], keys, args))
    idle_p50 = measured["idle"]["ttft_p50_s"]
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine_info(),
        "model_path": str(model),
        "cap": args.cap,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "model")},
        "server_env": how["env"] | extra,
        **measured,
        "ratio_p50": round(measured["loaded"]["ttft_p50_s"] / idle_p50, 2) if idle_p50 else None,
    }
    report(document)
    write_json(args.json, document)
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
