"""Check what the service reads from a real GPU: NVML samples and gauges, the engine choice.

Run on a host with an NVIDIA GPU (the `gpu` extra's nvidia-ml-py, and torch to put load on
the card):

    python scripts/gpu_check.py --json docs/results/gpu-check.json

It samples `inference.gpu.read_gpus` three ways (idle; with 8 GiB held; while bf16 matrix
products run) and checks that the readings move the way the card is used: memory in use
rises by the held amount, utilization rises under load. It prints the Prometheus lines
`GpuMetrics` publishes, and what `COMPANION_CHAT_ENGINE=auto` decides on this host given
both engines as candidates (a CUDA GPU: vLLM, without probing llama.cpp). Exit status 1
when a reading does not move as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest

from inference.config import ChatEngineConfig
from inference.engine_choice import decide
from inference.gpu import GpuMetrics, GpuSample, read_gpus

HELD_GIB = 8


def _row(stage: str, sample: GpuSample) -> dict[str, object]:
    return {
        "stage": stage,
        "gpu": sample.index,
        "name": sample.name,
        "utilization_pct": sample.utilization_pct,
        "memory_used_gib": round(sample.memory_used_bytes / 2**30, 2),
        "memory_total_gib": round(sample.memory_total_bytes / 2**30, 2),
        "power_w": sample.power_watts,
        "temperature_c": sample.temperature_c,
    }


def _busy_utilization(stop: threading.Event) -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the readings here")
    args = parser.parse_args()

    import torch

    rows: list[dict[str, object]] = []
    idle = read_gpus()
    if not idle:
        print("NVML reported no GPU (is nvidia-ml-py installed, is a driver present?)")
        return 1
    rows += [_row("idle", s) for s in idle]

    held = torch.empty(HELD_GIB * 2**30, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    holding = read_gpus()
    rows += [_row(f"{HELD_GIB} GiB held", s) for s in holding]
    del held
    torch.cuda.empty_cache()

    stop = threading.Event()
    worker = threading.Thread(target=_busy_utilization, args=(stop,))
    worker.start()
    time.sleep(3.0)  # NVML's utilization is an average over its last sample period
    loaded = read_gpus()
    stop.set()
    worker.join()
    rows += [_row("bf16 matmul load", s) for s in loaded]

    registry = CollectorRegistry()
    GpuMetrics(registry).update(loaded)
    exposition = generate_latest(registry).decode()

    choice = asyncio.run(decide(ChatEngineConfig(backend="auto"), ["llamacpp", "vllm"]))

    print(
        f"{'stage':<18} {'gpu':>3} {'name':<16} {'util %':>6} {'used GiB':>9} "
        f"{'total GiB':>9} {'power W':>8} {'temp C':>6}"
    )
    for r in rows:
        print(
            f"{r['stage']:<18} {r['gpu']:>3} {str(r['name'])[:16]:<16} "
            f"{r['utilization_pct']:>6.0f} {r['memory_used_gib']:>9} {r['memory_total_gib']:>9} "
            f"{r['power_w'] or '-':>8} {r['temperature_c'] or '-':>6}"
        )
    print()
    print("\n".join(line for line in exposition.splitlines() if not line.startswith("#")))
    print(f"\nengine choice on this host: {choice.backend} ({choice.reason})")

    grew = holding[0].memory_used_bytes - idle[0].memory_used_bytes
    checks = {
        "memory in use rose by the held amount (within 10%)": abs(grew - HELD_GIB * 2**30)
        <= 0.1 * HELD_GIB * 2**30,
        "utilization rose under load": loaded[0].utilization_pct > idle[0].utilization_pct,
        "every gauge published": all(
            f"companion:gpu_{g}" in exposition
            for g in ("utilization_perc", "memory_used_bytes", "memory_total_bytes")
        ),
        "auto picks vLLM on a CUDA host without probing": choice.backend == "vllm"
        and not choice.figures,
    }
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "rows": rows,
                    "choice": {"backend": choice.backend, "reason": choice.reason},
                    "checks": checks,
                },
                indent=2,
            )
        )
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
