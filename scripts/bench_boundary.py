#!/usr/bin/env python3
"""What the engine-process boundary costs, measured at the engine: inline vs separate.

The same llama.cpp engine, once in this process (``process="inline"``) and once
behind `ProcessEngine` (``"separate"``, the default), serves the same requests:
a short conversation whose prompt is cached after the first request, so time
to first token is mostly the path a request and its first token take, not
prefill. Rounds alternate the two modes, so a shared machine's drifting load
falls on both. Reported per mode: TTFT and inter-token gap, p50 and p90 over
all rounds, and the difference separate - inline.

    PYTHONPATH=. python scripts/bench_boundary.py --rounds 3 --requests 60 \\
        --json /tmp/bench_boundary.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import stream_engine
from bench_harness import distribution, itls
from bench_report import Column, format_table, machine_info, write_json

from inference.config import ChatEngineConfig, LlamaCppOptions
from inference.engine import Engine
from inference.factory import create_engine
from inference.types import ChatMessage, GenerationRequest, SamplingParams
from models.packaged import packaged_path

MODES = ("inline", "separate")
MESSAGES = (
    ChatMessage("system", "You are a kind companion."),
    ChatMessage("user", "Hi! How was your day?"),
)


async def measure(engine: Engine, tag: str, requests: int, tokens: int) -> dict[str, list[float]]:
    """Seconds to the first token and between tokens, for ``requests`` requests in a row."""
    ttft: list[float] = []
    gaps: list[float] = []
    for i in range(requests):
        request = GenerationRequest(
            request_id=f"{tag}-{i}",
            user_id="bench",
            conversation_id="bench",
            messages=MESSAGES,
            sampling=SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True),
        )
        sample = await stream_engine(engine, request)
        if i == 0:
            continue  # the first computes the prompt the others reuse
        ttft.append(sample.chunk_times[0])
        gaps += itls(sample.chunk_times)
    return {"ttft": ttft, "gap": gaps}


async def one_round(args: argparse.Namespace, mode: str, n: int) -> dict[str, list[float]]:
    config = ChatEngineConfig(
        model_path=args.model or packaged_path("chat"),
        n_ctx=2048,
        n_slots=4,
        llamacpp=LlamaCppOptions(n_threads=args.threads, repack=args.repack),
        process=mode,
    )
    engine = create_engine(config)
    assert engine is not None
    await engine.start()
    try:
        return await measure(engine, f"{mode}{n}", args.requests, args.tokens)
    finally:
        await engine.close()


def quantiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p90 in milliseconds (the harness's percentiles), and how many values."""
    d = distribution(v * 1000 for v in values)
    return {"p50": d["p50"], "p90": d["p90"], "n": len(values)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    pooled: dict[str, dict[str, list[float]]] = {m: {"ttft": [], "gap": []} for m in MODES}
    for n in range(args.rounds):
        for mode in MODES if n % 2 == 0 else MODES[::-1]:
            measured = await one_round(args, mode, n)
            for key, values in measured.items():
                pooled[mode][key] += values
    return {m: {k: quantiles(v) for k, v in pooled[m].items()} for m in MODES}


COLUMNS: tuple[Column, ...] = (
    ("mode", "mode", ""),
    ("ttft p50 ms", "ttft.p50", "f2"),
    ("ttft p90 ms", "ttft.p90", "f2"),
    ("gap p50 ms", "gap.p50", "f2"),
    ("gap p90 ms", "gap.p90", "f2"),
)


def table(summary: dict[str, Any]) -> str:
    lines = [format_table([{"mode": m, **summary[m]} for m in MODES], COLUMNS, left=1)]
    diff = {
        f"{k} {q}": summary["separate"][k][q] - summary["inline"][k][q]
        for k in ("ttft", "gap")
        for q in ("p50", "p90")
    }
    lines.append("separate - inline: " + ", ".join(f"{k} {v:+.2f} ms" for k, v in diff.items()))
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, help="GGUF (default: packaged SmolLM2)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the modes alternating")
    p.add_argument("--requests", type=int, default=60, help="requests per mode and round")
    p.add_argument("--tokens", type=int, default=16, help="tokens per reply")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repack", default="auto", choices=("auto", "on", "off"))
    p.add_argument("--json", type=Path)
    return p.parse_args()


if __name__ == "__main__":
    arguments = parse()
    result = asyncio.run(main(arguments))
    print(table(result))
    if arguments.json:
        write_json(
            arguments.json,
            {
                "machine": machine_info(),
                "args": vars(arguments)
                | {"model": str(arguments.model), "json": str(arguments.json)},
                "summary": result,
            },
        )
