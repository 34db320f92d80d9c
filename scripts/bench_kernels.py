"""Prompt and decode speed of llama.cpp's CPU kernels in this venv, as llama-bench measures them.

One sequence on `inference.engines.llamacpp.model.LlamaModel` (the engine's own layer,
no scheduler): ``pp`` computes a prompt of N tokens in one batch, ``tg`` decodes N
tokens one at a time. Each is repeated and the median reported, with the CPU backend
that ran them (a native build, or the variant a portable build chose), so two builds
can be compared with the same command in two venvs (docs/benchmarks.md, issue 21).

Example (from the repository root)::

    .venv/bin/python scripts/bench_kernels.py --prompt 512 --decode 128 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench_report import machine_info

from inference.engines.llamacpp.backends import load_cpu_backend
from inference.engines.llamacpp.model import BatchItem, ContextShape, LlamaModel
from inference.types import SamplingParams
from models.packaged import packaged_path


def prompt_seconds(model: LlamaModel, n: int) -> float:
    """One prompt of ``n`` tokens, computed in a single batch from an empty cache."""
    model.seq_truncate(0, 0)
    tokens = [(7 + 13 * i) % model.n_vocab for i in range(n)]
    began = time.perf_counter()
    status = model.decode([BatchItem(t, i, 0, i == n - 1) for i, t in enumerate(tokens)])
    elapsed = time.perf_counter() - began
    if status != 0:
        raise RuntimeError(f"llama_decode returned {status}")
    return elapsed


def decode_seconds(model: LlamaModel, n: int) -> float:
    """``n`` greedy single-token steps after a one-token prompt."""
    model.seq_truncate(0, 0)
    sampler = model.new_sampler(SamplingParams(temperature=0), None, None)
    try:
        model.decode([BatchItem(1, 0, 0, True)])
        token = model.sample(sampler, 0)
        began = time.perf_counter()
        for position in range(1, n + 1):
            if model.decode([BatchItem(token, position, 0, True)]) != 0:
                raise RuntimeError("llama_decode failed")
            token = model.sample(sampler, 0)
        return time.perf_counter() - began
    finally:
        model.free_sampler(sampler)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens (pp)")
    p.add_argument("--decode", type=int, default=128, help="generated tokens (tg)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="0: every usable core")
    p.add_argument("--repack", choices=("on", "off"), default="on")
    p.add_argument("--json", type=Path, help="write results here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    path = (args.model or packaged_path("chat")).resolve()
    n_ctx = max(args.prompt, args.decode + 1) + 16
    shape = ContextShape(
        n_ctx=n_ctx, n_seq_max=1, n_batch=max(args.prompt, 1), n_threads=args.threads
    )
    model = LlamaModel(path, shape, repack=args.repack == "on")
    try:
        prompt_seconds(model, args.prompt)  # warm-up: page in the weights, size the buffers
        pp = [prompt_seconds(model, args.prompt) for _ in range(args.repeat)]
        tg = [decode_seconds(model, args.decode) for _ in range(args.repeat)]
    finally:
        model.close()
    result = {
        "model": path.name,
        "backend": load_cpu_backend().describe(),
        "prompt_tokens": args.prompt,
        "decode_tokens": args.decode,
        "pp_tok_s": round(args.prompt / statistics.median(pp), 1),
        "tg_tok_s": round(args.decode / statistics.median(tg), 1),
        "pp_tok_s_runs": [round(args.prompt / s, 1) for s in pp],
        "tg_tok_s_runs": [round(args.decode / s, 1) for s in tg],
        "machine": machine_info(),
        "command": [sys.executable, *sys.argv],
    }
    print(f"backend  {result['backend']}")
    print(f"pp{args.prompt:<6} {result['pp_tok_s']:>8} tok/s   runs {result['pp_tok_s_runs']}")
    print(f"tg{args.decode:<6} {result['tg_tok_s']:>8} tok/s   runs {result['tg_tok_s_runs']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
