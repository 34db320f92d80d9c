"""The dashboard's arithmetic: snapshots read from real metric objects, rates, percentiles."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from inference.gpu import GpuMetrics, GpuSample
from inference.metrics import EngineMetrics
from inference.stats import EngineStats
from inference.types import Finished, Timings, Usage
from memory.metrics import MemoryMetrics, QueueSample
from server.dashboard.series import Snapshot, points, quantile, take_snapshot


def stats(model: str, **values: int) -> EngineStats:
    base = dict.fromkeys(
        (
            "running",
            "waiting",
            "kv_cells_used",
            "kv_cells_cached",
            "prefix_queried_tokens",
            "prefix_hit_tokens",
            "prompt_tokens",
            "generated_tokens",
            "host_cache_bytes",
            "host_cache_entries",
        ),
        0,
    )
    base.update(values)
    return EngineStats(model_id=model, kv_cells_total=1000, **base)


def finished(ttft_s: float, decode_s: float) -> Finished:
    return Finished("stop", Usage(10, 5, 0), Timings(0.0, ttft_s, decode_s))


def test_quantile_interpolates_inside_buckets_like_promql() -> None:
    buckets = ((0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0))
    assert quantile(0.5, buckets) == pytest.approx(0.2)
    assert quantile(0.25, buckets) == pytest.approx(0.15)
    assert quantile(0.75, buckets) == pytest.approx(0.3)
    assert quantile(0.5, ((0.1, 0.0), (float("inf"), 0.0))) is None
    assert quantile(0.99, ((0.1, 1.0), (float("inf"), 10.0))) == 0.1  # +Inf: largest bound


def test_snapshot_sums_models_and_reads_gpu_and_queue() -> None:
    registry = CollectorRegistry()
    engine, gpus, memory = EngineMetrics(registry), GpuMetrics(registry), MemoryMetrics(registry)
    engine.update(stats("a", running=2, kv_cells_used=300, generated_tokens=40))
    engine.update(stats("b", running=1, kv_cells_used=700, generated_tokens=2))
    engine.request_finished("a", finished(0.05, 0.5), [0.02])
    gpus.update(
        [GpuSample(0, "X", 50.0, 2, 8, None, None), GpuSample(1, "X", 100.0, 2, 8, None, None)]
    )
    memory.update_queue(QueueSample("q", queued=3, active=1, scheduled=0, oldest_age_s=4.0))

    snap = take_snapshot(registry.collect(), wall_s=100.0, mono_s=1.0)
    assert (snap.running, snap.generated_tokens, snap.kv_usage) == (3, 42, 0.7)
    assert snap.gpu_utilization == 0.75 and snap.gpu_memory_used == 0.25
    assert snap.queue_depth == 3
    assert snap.ttft[-1] == (float("inf"), 1.0)


def test_without_engine_gpu_or_queue_those_readings_are_absent() -> None:
    snap = take_snapshot(CollectorRegistry().collect(), wall_s=0.0, mono_s=0.0)
    assert snap.kv_usage is None and snap.gpu_utilization is None and snap.queue_depth is None
    assert snap.ttft == ()


def test_points_give_rates_per_interval_and_percentiles_over_the_window() -> None:
    registry = CollectorRegistry()
    engine = EngineMetrics(registry)
    history: list[Snapshot] = []

    def tick(mono_s: float) -> None:
        history.append(take_snapshot(registry.collect(), wall_s=1000 + mono_s, mono_s=mono_s))

    tick(0.0)
    engine.update(stats("m", generated_tokens=100, prefix_queried_tokens=50, prefix_hit_tokens=40))
    engine.request_finished("m", finished(0.3, 1.0), [])
    tick(2.0)
    tick(4.0)  # a quiet interval
    tick(40.0)  # the request has left the 30 s window

    first, quiet, later = points(history, window_s=30.0)
    assert first.t == 1002.0
    assert first.tokens_per_s == 50.0 and first.requests_per_s == 0.5
    assert first.prefix_hit_rate == pytest.approx(0.8)
    assert first.ttft_s[0] is not None and 0.25 < first.ttft_s[0] <= 0.5
    assert quiet.tokens_per_s == 0.0
    assert quiet.ttft_s == first.ttft_s  # still inside the window
    assert later.ttft_s == [None, None, None] and later.prefix_hit_rate is None
