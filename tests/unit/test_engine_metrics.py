from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from inference.metrics import EngineMetrics
from inference.stats import EngineStats
from inference.types import Finished, Timings, Usage


def snapshot(**values: int) -> EngineStats:
    base = {
        "running": 0,
        "waiting": 0,
        "kv_cells_total": 1000,
        "kv_cells_used": 0,
        "kv_cells_cached": 0,
        "prefix_queried_tokens": 0,
        "prefix_hit_tokens": 0,
        "prompt_tokens": 0,
        "generated_tokens": 0,
        "host_cache_bytes": 0,
        "host_cache_entries": 0,
    }
    base.update(values)
    return EngineStats(model_id="m", **base)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model_name": "m", **labels})


def test_snapshots_become_gauges_and_monotonic_counters() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    metrics.update(snapshot(running=3, kv_cells_used=250, prefix_queried_tokens=100))
    metrics.update(snapshot(running=1, kv_cells_used=500, prefix_queried_tokens=160))
    assert sample(registry, "companion:num_requests_running") == 1
    assert sample(registry, "companion:kv_cache_usage_perc") == 0.5
    assert sample(registry, "companion:prefix_cache_queries_total") == 160
    metrics.update(snapshot(prefix_queried_tokens=160))
    assert sample(registry, "companion:prefix_cache_queries_total") == 160


def test_finished_requests_feed_latency_histograms() -> None:
    registry = CollectorRegistry()
    metrics = EngineMetrics(registry)
    finished = Finished("stop", Usage(10, 5, 3), Timings(0.01, 0.2, 0.1))
    metrics.request_finished("m", finished, [0.03, 0.04])
    assert sample(registry, "companion:time_to_first_token_seconds_count") == 1
    assert sample(registry, "companion:inter_token_latency_seconds_count") == 2
    assert sample(registry, "companion:e2e_request_latency_seconds_sum") == 0.30000000000000004
    assert sample(registry, "companion:request_success_total", finished_reason="stop") == 1
    assert b"companion:kv_cache_usage_perc" in generate_latest(registry)
