"""CPU latency of the emotion classifier per message, the MiniLM pass included.

    nice -n 5 .venv/bin/python scripts/bench_emotion_latency.py \
        --data ../shared/data/goemotions-ekman/dev.tsv --json artifacts/bench-emotion-latency.json

Messages go one at a time, as the service sees them (the first ``--messages``
rows of the file). Steps, each timed per call:

- ``embed``: `SentenceEmbedder.encode`, the sentence vector alone (what retrieval
  and the content classifier pay for anyway);
- ``embed+states``: the same pass also returning the layer-5 token states;
- ``head``: rules + the branched layer-6 head on those states;
- ``classify``: `EmotionClassifier.classify_batch` on one text, i.e. the whole
  emotion cost of a message: one MiniLM pass plus the head.

Runs once per embedder thread count in ``--threads`` (ONNX Runtime and torch's
pooling; the service uses 1); the head always runs on its own one-thread ONNX
Runtime session.
Prints a table and writes JSON with the machine description.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import format_table, machine_info, write_json
from emotion_cache import ROOT

from inference.classifiers.dataset import read_tsv
from inference.classifiers.emotion import EmotionClassifier
from inference.classifiers.head import BRANCH_LAYER
from inference.embedder import SentenceEmbedder

COLUMNS = (
    ("threads", "threads", ""),
    ("step", "step", ""),
    ("n", "n", "i"),
    ("mean ms", "mean_ms", "f2"),
    ("p50 ms", "p50_ms", "f2"),
    ("p95 ms", "p95_ms", "f2"),
    ("p99 ms", "p99_ms", "f2"),
)


def timed(call: Callable[[str], Any], texts: list[str]) -> list[float]:
    """Milliseconds per call, after a few untimed warm-up calls."""
    for text in texts[:10]:
        call(text)
    out = []
    for text in texts:
        start = time.perf_counter()
        call(text)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(threads: int, step: str, ms: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(ms, n=100)
    return {
        "threads": threads,
        "step": step,
        "n": len(ms),
        "mean_ms": statistics.fmean(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": q[94],
        "p99_ms": q[98],
    }


def run(threads: int, texts: list[str]) -> list[dict[str, Any]]:
    torch.set_num_threads(max(1, threads))  # the head runs on torch, as in the service
    embedder = SentenceEmbedder(threads=threads)
    classifier = EmotionClassifier(embedder)
    states = {t: embedder.encode_with_states([t], BRANCH_LAYER)[1][0] for t in texts}
    steps: dict[str, Callable[[str], Any]] = {
        "embed": lambda t: embedder.encode([t]),
        "embed+states": lambda t: embedder.encode_with_states([t], BRANCH_LAYER),
        "head": lambda t: classifier.decide([t], [states[t]]),
        "classify": lambda t: classifier.classify_batch([t]),
    }
    rows = [summary(threads, name, timed(call, texts)) for name, call in steps.items()]
    embedder.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    data = ROOT.parent / "shared" / "data" / "goemotions-ekman" / "dev.tsv"
    parser.add_argument("--data", type=Path, default=data)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--threads", default="1,2", help="ONNX Runtime / torch threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    texts = [row.text for row in read_tsv(args.data)[: args.messages]]
    load_before = os.getloadavg()
    rows = [r for n in args.threads.split(",") for r in run(int(n), texts)]
    load_after = os.getloadavg()
    print(format_table(rows, COLUMNS))
    # Other work on the same cores moves these numbers a lot: say how busy they were.
    print(f"load average (1, 5, 15 min) before {load_before}, after {load_after}")
    if args.json:
        arguments = {k: str(v) for k, v in vars(args).items()}
        load = {"before": load_before, "after": load_after}
        document = {"machine": machine_info(), "args": arguments, "load_average": load}
        write_json(args.json, document | {"rows": rows})


if __name__ == "__main__":
    main()
