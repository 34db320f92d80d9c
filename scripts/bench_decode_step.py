"""Where one conversation's decode step goes when other conversations sit idle in the KV cache.

Issue 17 asks why a single stream decodes more slowly on a server that has just
served eight conversations than on a fresh one. This script answers it on the
model directly (`inference.engines.llamacpp.model.LlamaModel`, the engine's own
wrapper, same context parameters) and then through the whole engine:

- ``raw``: one sequence prefills a prompt and decodes ``--tokens`` tokens one
  step at a time, timed around ``llama_decode`` alone. Before it, ``--idle``
  other sequences were filled with ``--idle-tokens`` each and left in the cache,
  as finished conversations are. The layout matters: llama.cpp's unified cache
  attends over every cell up to the highest one in use (``n_kv``), so the script
  places the idle sequences below the active one (``below``, what a server that
  served them first looks like) or evicts them first (``evicted``: the cells are
  free again, the active sequence sits where it was placed).
- ``engine``: the same (other users' finished conversations held, then one
  stream), in both KV layouts (``COMPANION_CHAT_KV_LAYOUT``), through
  `LlamaCppEngine.generate` (scheduler, batch building, sampling, detokenising,
  the event queue), so the difference to ``raw`` is the Python work per token.
- ``--running B``: B sequences decoding together, unified cache against one
  stream per sequence (what ``per_slot`` gives).

Prints a table (wall ms per token p50/p90; the process's CPU time per token, all
threads, which stays meaningful on a machine shared with other work, above all
with ``--threads 1``) and writes JSON::

    .venv/bin/python scripts/bench_decode_step.py --idle 0,8 --json /tmp/decode_step.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_report import format_table, machine_info, write_json

from inference.engines.llamacpp.engine import LlamaCppConfig, LlamaCppEngine
from inference.engines.llamacpp.model import BatchItem, ContextShape, LlamaModel
from inference.types import ChatMessage, GenerationRequest, SamplingParams
from models.packaged import packaged_path

COLUMNS = (
    ("path", "path", ""),
    ("layout", "layout", ""),
    ("idle seqs", "idle", "i"),
    ("cells in use", "cells_in_use", "i"),
    ("ms/token p50", "ms_p50", "f2"),
    ("p90", "ms_p90", "f2"),
    ("cpu ms/token", "cpu_ms", "f2"),
    ("tokens", "tokens", "i"),
)


@dataclass(frozen=True)
class Row:
    path: str  # raw | engine
    layout: str  # fresh | below | evicted
    idle: int
    cells_in_use: int
    ms_p50: float
    ms_p90: float
    cpu_ms: float  # CPU time of the whole process per token (all threads)
    tokens: int


def _filler(model: LlamaModel, n: int, salt: int) -> list[int]:
    text = " ".join(f"word{salt}x{i}" for i in range(n))
    return model.tokenize(text, add_bos=True)[:n]


def _prefill(model: LlamaModel, seq: int, tokens: list[int], n_batch: int) -> None:
    for start in range(0, len(tokens), n_batch):
        chunk = tokens[start : start + n_batch]
        items = [
            BatchItem(t, start + i, seq, start + i == len(tokens) - 1) for i, t in enumerate(chunk)
        ]
        assert model.decode(items) == 0


def raw_run(args: argparse.Namespace, idle: int, layout: str) -> Row:
    shape = ContextShape(args.ctx, args.slots, 512, args.threads)
    model = LlamaModel(args.model, shape, repack=False)
    try:
        active = idle  # the idle sequences take 0..idle-1, in the cells below
        for seq in range(idle):
            _prefill(model, seq, _filler(model, args.idle_tokens, seq), 512)
        prompt = _filler(model, args.prompt_tokens, 999)
        _prefill(model, active, prompt, 512)
        if layout == "evicted":
            for seq in range(idle):
                model.seq_truncate(seq, 0)
        times: list[float] = []
        pos = len(prompt)
        token = prompt[-1]
        cpu = time.process_time()
        for _ in range(args.tokens):
            started = time.perf_counter()
            assert model.decode([BatchItem(token, pos, active, True)]) == 0
            times.append(time.perf_counter() - started)
            pos += 1
        cpu = time.process_time() - cpu
        in_use = (0 if layout == "evicted" else idle * args.idle_tokens) + pos
        return _row("raw", layout, idle, in_use, times, cpu)
    finally:
        model.close()


def batch_run(args: argparse.Namespace, running: int, unified: bool, idle: int) -> Row:
    """``running`` sequences of ``--prompt-tokens`` each decode together, one token each
    per step, after ``idle`` finished ones were left below them (unified cache) or in
    their own streams (``unified=False``: one stream of n_ctx/slots cells per sequence,
    as llama-server's slots)."""
    shape = ContextShape(args.ctx, args.slots, 512, args.threads, kv_unified=unified)
    model = LlamaModel(args.model, shape, repack=False)
    try:
        for seq in range(idle):
            _prefill(model, seq, _filler(model, args.idle_tokens, seq), 512)
        seqs = list(range(idle, idle + running))
        prompts = {seq: _filler(model, args.prompt_tokens, 100 + seq) for seq in seqs}
        for seq in seqs:
            _prefill(model, seq, prompts[seq], 512)
        pos = args.prompt_tokens
        times: list[float] = []
        cpu = time.process_time()
        for _ in range(args.tokens):
            items = [BatchItem(prompts[seq][-1], pos, seq, True) for seq in seqs]
            started = time.perf_counter()
            assert model.decode(items) == 0
            times.append(time.perf_counter() - started)
            pos += 1
        cpu = time.process_time() - cpu
        in_use = idle * args.idle_tokens + running * pos
        layout = ("unified" if unified else "streams") + f" x{running}"
        return _row("raw", layout, idle, in_use, times, cpu)
    finally:
        model.close()


async def engine_run(args: argparse.Namespace, idle: int, kv_layout: str) -> Row:
    config = LlamaCppConfig(
        model_path=args.model,
        model_id="bench",
        n_ctx=args.ctx,
        n_slots=args.slots,
        n_threads=args.threads,
        repack="off",
        kv_layout=kv_layout,
        state_dir=Path(tempfile.mkdtemp()),
    )
    engine = LlamaCppEngine(config)
    await engine.start()
    try:
        words = " ".join(f"w{i}" for i in range(args.idle_tokens // 2))
        for i in range(idle):  # finished conversations of other users, left as cache
            await _drain(engine, _request(f"user{i}", f"{i} {words}", 1))
        in_use = engine.stats().kv_cells_cached
        cpu = time.process_time()
        times = await _drain(
            engine, _request("me", "Tell me a long story about the sea.", args.tokens)
        )
        cpu = time.process_time() - cpu
        layout = ("below" if idle else "fresh") + ("" if kv_layout == "unified" else ", per slot")
        return _row("engine", layout, idle, in_use, times, cpu)
    finally:
        await engine.close()


def _request(user: str, text: str, max_tokens: int) -> GenerationRequest:
    return GenerationRequest(
        request_id=uuid.uuid4().hex,
        user_id=user,
        messages=[ChatMessage("user", text)],
        sampling=SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True),
    )


async def _drain(engine: LlamaCppEngine, request: GenerationRequest) -> list[float]:
    times: list[float] = []
    last = None
    async for _event in engine.generate(request):
        now = time.perf_counter()
        if last is not None:
            times.append(now - last)
        last = now
    return times


def _row(path: str, layout: str, idle: int, in_use: int, times: list[float], cpu_s: float) -> Row:
    ms = sorted(t * 1000 for t in times[2:])  # the first steps build the graph
    return Row(
        path,
        layout,
        idle,
        in_use,
        round(statistics.median(ms), 2),
        round(ms[int(0.9 * (len(ms) - 1))], 2),
        round(cpu_s * 1000 / max(1, len(times)), 2),
        len(times),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--idle", default="0,8", help="comma list of idle sequence counts")
    p.add_argument("--idle-tokens", type=int, default=1000)
    p.add_argument("--prompt-tokens", type=int, default=800)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--ctx", type=int, default=16384)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument(
        "--running",
        type=int,
        default=0,
        help="instead: this many sequences decoding together, unified cache vs one stream each",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.model = args.model or packaged_path("chat")
    rows: list[Row] = []
    if args.running:
        for idle in (int(n) for n in args.idle.split(",")):
            rows.extend(batch_run(args, args.running, unified, idle) for unified in (True, False))
        print(format_table([asdict(r) for r in rows], COLUMNS, left=2))
        return
    for idle in (int(n) for n in args.idle.split(",")):
        layouts = ("fresh",) if idle == 0 else ("below", "evicted")
        rows.extend(raw_run(args, idle, layout) for layout in layouts)
        if not args.skip_engine:
            for kv_layout in ("unified", "per_slot"):
                rows.append(asyncio.run(engine_run(args, idle, kv_layout)))
    print(format_table([asdict(r) for r in rows], COLUMNS, left=2))
    if args.json:
        settings = {k: str(v) for k, v in vars(args).items()}
        write_json(
            args.json,
            {"machine": machine_info(), "args": settings, "rows": [asdict(r) for r in rows]},
        )


if __name__ == "__main__":
    main()
