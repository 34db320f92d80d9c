#!/usr/bin/env python3
"""What per-user prefix caches cost on vLLM: the persona recomputed for every new user.

The vLLM engine salts its prefix cache per user (``COMPANION_VLLM_CACHE_SCOPE=user``),
so a user's first turn computes the persona even when a hundred users before them
had the same one; ``shared`` lets everyone hit it (and lets a user time a guess at
another's conversation). This runs the same first turns, one new user after another
(bench_lib's persona and memory notes, ~650 prompt tokens), on the in-process vLLM
engine under each scope, and then each user's second turn, and reports time to first
token and the cached prompt tokens vLLM reports.

    PYTHONPATH=. python scripts/bench_cache_scope.py --users 8 --json docs/results/cache_scope.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import stream_engine
from bench_lib import build_conversations

from inference.config import ChatEngineConfig, VllmOptions
from inference.engines.vllm import VllmEngine
from inference.types import ChatMessage, GenerationRequest, SamplingParams
from models.convert import hf_directory
from models.packaged import packaged_path


async def first_token(engine: VllmEngine, request: GenerationRequest) -> tuple[float, int]:
    """Seconds to the first event (the reply's one token, or its end when that token was
    the end of the sequence) and the prompt tokens vLLM found cached."""
    sample = await stream_engine(engine, request)
    ttft = sample.chunk_times[0] if sample.chunk_times else sample.end_s
    if sample.cached_tokens is None:
        raise RuntimeError("no Finished event")
    return ttft, sample.cached_tokens


async def run_scope(scope: str, model_dir: Path, users: int) -> dict[str, Any]:
    config = ChatEngineConfig(
        backend="vllm",
        model_path=model_dir,
        n_ctx=4096,
        n_slots=8,
        vllm=VllmOptions(kv_cache_mb=1024, cache_scope=scope),
    )
    engine = VllmEngine(config)
    await engine.start()
    rows: dict[str, list[tuple[float, int]]] = {"first": [], "second": []}
    try:
        conversations = build_conversations(users, 2)
        for turn in (0, 1):
            for index, conversation in enumerate(conversations):
                messages = [ChatMessage(m.role, m.content) for m in conversation.opening()]
                for said in conversation.user_messages[: turn + 1]:
                    messages.append(ChatMessage("user", said))
                    if said != conversation.user_messages[turn]:
                        messages.append(ChatMessage("assistant", "I hear you. Tell me more."))
                request = GenerationRequest(
                    request_id=f"{scope}-{index}-{turn}",
                    user_id=f"user-{index}",
                    messages=messages,
                    sampling=SamplingParams(max_tokens=1, temperature=0),
                )
                rows["first" if turn == 0 else "second"].append(await first_token(engine, request))
    finally:
        await engine.close()
    return {
        kind: {
            "ttft_p50_s": statistics.median(t for t, _ in values),
            "ttft_each_s": [round(t, 4) for t, _ in values],
            "cached_tokens_each": [c for _, c in values],
        }
        for kind, values in rows.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cache = Path(tempfile.gettempdir()) / "bench-vllm-models"
    model_dir = hf_directory(packaged_path("chat"), cache)
    results = {
        scope: asyncio.run(run_scope(scope, model_dir, args.users)) for scope in ("user", "shared")
    }
    print(f"{'scope':<8} {'turn':<7} {'TTFT p50 (s)':>13} {'cached tokens (each user)'}")
    for scope, kinds in results.items():
        for kind, row in kinds.items():
            cached = " ".join(str(c) for c in row["cached_tokens_each"])
            print(f"{scope:<8} {kind:<7} {row['ttft_p50_s']:>13.3f} {cached}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"users": args.users, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
