"""The dashboard's numbers: snapshots of the metrics registry, and chart points between them.

A `Snapshot` is read from the same Prometheus registry ``/metrics`` serves
(in multiprocess mode, the sum over every worker process), so the dashboard
and Prometheus never disagree. Counters and histogram buckets are totals;
a `Point` turns two snapshots into rates (tokens per second over the interval)
and percentiles (TTFT, inter-token latency and end-to-end, interpolated inside
histogram buckets the way PromQL's ``histogram_quantile`` does, over a sliding
window so that a quiet interval still shows the recent latency).
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import msgspec
from prometheus_client import Metric

PREFIX = "companion:"
Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last
_QUANTILES = (0.5, 0.9, 0.99)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The service at one moment: totals, gauges, latency histograms."""

    wall_s: float  # for the charts' time axis
    mono_s: float  # for rates
    generated_tokens: float
    prompt_tokens: float
    prefix_queried_tokens: float
    prefix_hit_tokens: float
    finished_requests: float
    running: float
    waiting: float
    kv_usage: float | None  # the fullest model's; None without an engine
    gpu_utilization: float | None  # mean over GPUs (0..1); None without NVML
    gpu_memory_used: float | None  # fraction of all GPU memory
    queue_depth: float | None  # memory jobs waiting; None before the first sample
    ttft: Buckets
    itl: Buckets
    e2e: Buckets


class Point(msgspec.Struct, kw_only=True):
    """One chart point: rates over the interval ending at ``t``, percentiles over the window."""

    t: float
    tokens_per_s: float
    prompt_tokens_per_s: float
    requests_per_s: float
    ttft_s: list[float | None]  # p50, p90, p99
    itl_s: list[float | None]
    e2e_s: list[float | None]
    prefix_hit_rate: float | None  # hit / queried prompt tokens over the window
    kv_usage: float | None
    running: float
    waiting: float
    gpu_utilization: float | None
    gpu_memory_used: float | None
    queue_depth: float | None


def take_snapshot(families: Iterable[Metric], wall_s: float, mono_s: float) -> Snapshot:
    """Read a snapshot out of collected metric families."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in families:
        for sample in family.samples:
            samples[sample.name].append((sample.labels, sample.value))

    def total(name: str) -> float:
        return sum(value for _, value in samples.get(PREFIX + name, ()))

    def values(name: str, **match: str) -> list[float]:
        return [
            value
            for labels, value in samples.get(PREFIX + name, ())
            if all(labels.get(k) == v for k, v in match.items())
        ]

    kv = values("kv_cache_usage_perc")
    gpu_used, gpu_total = total("gpu_memory_used_bytes"), total("gpu_memory_total_bytes")
    queued = values("job_queue_depth", state="queued")
    return Snapshot(
        wall_s=wall_s,
        mono_s=mono_s,
        generated_tokens=total("generation_tokens_total"),
        prompt_tokens=total("prompt_tokens_total"),
        prefix_queried_tokens=total("prefix_cache_queries_total"),
        prefix_hit_tokens=total("prefix_cache_hits_total"),
        finished_requests=total("request_success_total"),
        running=total("num_requests_running"),
        waiting=total("num_requests_waiting"),
        kv_usage=max(kv) if kv else None,
        gpu_utilization=_mean(values("gpu_utilization_perc")),
        gpu_memory_used=gpu_used / gpu_total if gpu_total else None,
        queue_depth=sum(queued) if queued else None,
        ttft=_buckets(samples.get(PREFIX + "time_to_first_token_seconds_bucket", ())),
        itl=_buckets(samples.get(PREFIX + "inter_token_latency_seconds_bucket", ())),
        e2e=_buckets(samples.get(PREFIX + "e2e_request_latency_seconds_bucket", ())),
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _buckets(samples: Iterable[tuple[dict[str, str], float]]) -> Buckets:
    """Cumulative bucket counts summed over every label set (every model)."""
    counts: dict[float, float] = defaultdict(float)
    for labels, value in samples:
        counts[float(labels["le"])] += value
    return tuple(sorted(counts.items()))


def quantile(q: float, buckets: Buckets) -> float | None:
    """The ``q`` quantile of a cumulative histogram, linear inside the bucket; None if empty.

    As in PromQL, a rank that falls in the +Inf bucket answers the largest finite bound.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    index = bisect.bisect_left([count for _, count in buckets], rank)
    bound, count = buckets[index]
    if math.isinf(bound):
        return buckets[index - 1][0] if index > 0 else None
    lower, below = buckets[index - 1] if index > 0 else (0.0, 0.0)
    if count == below:
        return bound
    return lower + (bound - lower) * (rank - below) / (count - below)


def _difference(newer: Buckets, older: Buckets) -> Buckets:
    before = dict(older)
    return tuple((bound, count - before.get(bound, 0.0)) for bound, count in newer)


def point(previous: Snapshot, current: Snapshot, window_start: Snapshot) -> Point:
    """The point at ``current``: rates since ``previous``, percentiles since ``window_start``."""
    elapsed = max(current.mono_s - previous.mono_s, 1e-9)

    def rate(field: str) -> float:
        change: float = getattr(current, field) - getattr(previous, field)
        return max(change, 0.0) / elapsed

    def percentiles(field: str) -> list[float | None]:
        window = _difference(getattr(current, field), getattr(window_start, field))
        return [quantile(q, window) for q in _QUANTILES]

    queried = current.prefix_queried_tokens - window_start.prefix_queried_tokens
    hits = current.prefix_hit_tokens - window_start.prefix_hit_tokens
    return Point(
        t=current.wall_s,
        tokens_per_s=rate("generated_tokens"),
        prompt_tokens_per_s=rate("prompt_tokens"),
        requests_per_s=rate("finished_requests"),
        ttft_s=percentiles("ttft"),
        itl_s=percentiles("itl"),
        e2e_s=percentiles("e2e"),
        prefix_hit_rate=hits / queried if queried > 0 else None,
        kv_usage=current.kv_usage,
        running=current.running,
        waiting=current.waiting,
        gpu_utilization=current.gpu_utilization,
        gpu_memory_used=current.gpu_memory_used,
        queue_depth=current.queue_depth,
    )


def points(snapshots: Sequence[Snapshot], window_s: float) -> list[Point]:
    """A point for every snapshot after the first, percentiles over the last ``window_s``."""
    out = []
    start = 0
    for i in range(1, len(snapshots)):
        while snapshots[i].mono_s - snapshots[start].mono_s > window_s and start < i - 1:
            start += 1
        out.append(point(snapshots[i - 1], snapshots[i], snapshots[start]))
    return out
