"""One model in several quantizations: the engine's step times, and what each costs.

Why the llama.cpp engine loads a Q8_0 copy of the packaged Q4_1 model
(`inference.engines.llamacpp.weights`). Each ``--types`` entry is the same model:
``as-is`` is the file, the others are made from it by llama.cpp's quantizer (the engine's
own copy for ``q8_0``). For each, on the engine's layer
(`inference.engines.llamacpp.model.LlamaModel`) with the default install's KV layout
(a stream of its own for each of 16 sequences, 4,096 cells each), the median time of
the step shapes a server runs:

- ``1``: one conversation decoding (each stream holds ``--context`` tokens);
- ``8``: eight decoding together;
- ``7+16`` / ``7+32``: seven decoding while a new prompt rides along in chunks of 16
  or 32 tokens (`step_budget`);
- ``0+128``: a prompt alone, 128 tokens a step;

then the perplexity of LoCoMo dialogue (``--locomo``; windows of 512 tokens, the
second half of each scored), so a faster type's cost in quality is on the same line.

Prints a table and writes JSON::

    .venv/bin/python scripts/bench_weights.py --types as-is,q8_0,q5_0,q4_0 \\
        --locomo ../shared/data/locomo/locomo-dev.json --json /tmp/bench_weights.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
from bench_report import machine_info

from inference.engines.llamacpp.model import BatchItem, ContextShape, LlamaModel, quiet_logs
from inference.engines.llamacpp.weights import make_copy
from models.packaged import packaged_path

SLOTS, CELLS = 16, 4096
SHAPES = (("1", 1, 0), ("8", 8, 0), ("7+16", 7, 16), ("7+32", 7, 32), ("0+128", 0, 128))
WINDOW = 512
_FTYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q5_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_0,
    "q5_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_1,
}


def weights_file(source: Path, kind: str, scratch: Path) -> Path:
    """``source`` as it is, its Q8_0 copy as the engine makes it, or another requantization."""
    if kind == "as-is":
        return source
    target = scratch / f"{source.stem}.{kind}.gguf"
    if kind == "q8_0":
        if not make_copy(source, target):
            raise RuntimeError("the Q8_0 copy failed")
        return target
    quiet_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = _FTYPES[kind]
    params.allow_requantize = True
    status = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if status != 0:
        raise RuntimeError(f"quantizing to {kind} failed ({status})")
    return target


def step_times(model: LlamaModel, context: int, steps: int) -> dict[str, float]:
    """Median ms of each of `SHAPES`, every stream holding ``context`` tokens."""
    filler = [(11 + 17 * i) % model.n_vocab for i in range(context + steps + 256)]
    for seq in range(8):
        for start in range(0, context, 256):
            part = filler[start : min(context, start + 256)]
            items = [BatchItem(t, start + j, seq, False) for j, t in enumerate(part)]
            if model.decode(items) != 0:
                raise RuntimeError("llama_decode failed")
    newcomer = 9  # the sequence whose prompt rides along
    result: dict[str, float] = {}
    for name, streams, chunk in SHAPES:
        times = []
        for k in range(steps):
            items = [BatchItem(filler[k], context + k, seq, True) for seq in range(streams)]
            items += [
                BatchItem(
                    filler[(k * chunk + j) % context], k * chunk + j, newcomer, j == chunk - 1
                )
                for j in range(chunk)
            ]
            began = time.perf_counter()
            if model.decode(items) != 0:
                raise RuntimeError("llama_decode failed")
            times.append(time.perf_counter() - began)
        for seq in range(streams):
            model.seq_truncate(seq, context)
        model.seq_truncate(newcomer, 0)
        result[name] = round(1000 * statistics.median(times), 1)
    return result


def perplexity(model: LlamaModel, text: str, windows: int) -> float:
    """Perplexity of ``text`` in windows of `WINDOW` tokens (the second half of each scored)."""
    tokens = model.tokenize(text, add_bos=False)
    nll, scored = 0.0, 0
    for w in range(min(windows, len(tokens) // WINDOW)):
        window = tokens[w * WINDOW : (w + 1) * WINDOW]
        model.seq_truncate(0, 0)
        half = WINDOW // 2
        items = [BatchItem(t, i, 0, i >= half - 1) for i, t in enumerate(window)]
        for start in range(0, WINDOW, 256):  # n_batch 256
            if model.decode(items[start : start + 256]) != 0:
                raise RuntimeError("llama_decode failed")
            for i in range(max(start, half - 1), min(start + 256, WINDOW) - 1):
                logits = np.array(model.logits(i - start), dtype=np.float64)
                top = logits.max()
                log_z = top + math.log(float(np.exp(logits - top).sum()))
                nll += log_z - logits[window[i + 1]]
                scored += 1
    return math.exp(nll / max(scored, 1))


def dialogue(path: Path) -> str:
    """The turns of every conversation in a LoCoMo-format file, one ``speaker: text`` a line."""
    samples = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for sample in samples if isinstance(samples, list) else [samples]:
        for key, session in sample["conversation"].items():
            if key.startswith("session_") and isinstance(session, list):
                lines += [f"{turn['speaker']}: {turn['text']}" for turn in session]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="GGUF file (default: the packaged SmolLM2)")
    p.add_argument("--types", default="as-is,q8_0,q5_0,q4_0,q5_1")
    p.add_argument("--context", type=int, default=800, help="tokens each stream holds")
    p.add_argument("--steps", type=int, default=30, help="steps of each shape")
    p.add_argument("--locomo", type=Path, help="LoCoMo JSON for the perplexity (else none)")
    p.add_argument("--windows", type=int, default=16, help="perplexity windows of 512 tokens")
    p.add_argument("--threads", type=int, default=0, help="0: every usable core")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    source = (args.model or packaged_path("chat")).resolve()
    text = dialogue(args.locomo) if args.locomo else ""
    rows: list[dict[str, Any]] = []
    header = f"{'weights':8} {'MiB':>6} " + " ".join(f"{n:>7}" for n, _, _ in SHAPES) + "    ppl"
    print(f"step ms (median of {args.steps}), {SLOTS} per-slot streams of {args.context} tokens")
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        for kind in args.types.split(","):
            path = weights_file(source, kind, Path(scratch))
            shape = ContextShape(SLOTS * CELLS, SLOTS, 256, args.threads, kv_unified=False)
            model = LlamaModel(path, shape)
            try:
                steps = step_times(model, args.context, args.steps)
                ppl = perplexity(model, text, args.windows) if text else None
            finally:
                model.close()
            row = {"weights": kind, "bytes": path.stat().st_size, "step_ms": steps, "ppl": ppl}
            rows.append(row)
            cells = " ".join(f"{steps[n]:>7}" for n, _, _ in SHAPES)
            shown = f"{ppl:7.3f}" if ppl is not None else "      -"
            print(f"{kind:8} {path.stat().st_size / 2**20:6.1f} {cells} {shown}", flush=True)
    if args.json:
        result = {
            "model": source.name,
            "rows": rows,
            "context": args.context,
            "machine": machine_info(),
            "command": [sys.executable, *sys.argv],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
