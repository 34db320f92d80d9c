"""Prometheus metrics for engines, named in vLLM's style (``companion:...``).

`EngineMetrics` is both the `EngineObserver` an engine reports finished
requests to (latency histograms) and the logger that turns `EngineStats`
snapshots into gauges and counters (`update`, called periodically by the
server). Counters in the snapshot are totals, so `update` adds the difference
since the last snapshot. Works in Prometheus multiprocess mode: gauges sum
over live workers.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from inference.stats import EngineStats
from inference.types import Finished

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

_COUNTERS = {
    "prefix_queried_tokens": (
        "prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache",
    ),
    "prefix_hit_tokens": ("prefix_cache_hits", "Prompt tokens served from the prefix cache"),
    "prompt_tokens": ("prompt_tokens", "Prompt tokens processed"),
    "generated_tokens": ("generation_tokens", "Tokens generated"),
    "preemptions": ("num_preemptions", "Running requests preempted"),
}


class EngineMetrics:
    """Engine gauges, counters and latency histograms, labelled by model."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        label = ["model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(
                f"{prefix}:{name}", doc, label, registry=registry, multiprocess_mode="livesum"
            )

        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(f"{prefix}:{name}", doc, label, registry=registry, buckets=buckets)

        self.running = gauge("num_requests_running", "Requests decoding now")
        self.waiting = gauge("num_requests_waiting", "Requests waiting for admission")
        self.kv_usage = Gauge(
            f"{prefix}:kv_cache_usage_perc",
            "Fraction of KV cache cells held by running requests (1 = full)",
            label,
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.kv_cached = gauge("kv_cache_cached_cells", "KV cells kept for reuse by idle sequences")
        self.host_bytes = gauge("host_kv_cache_bytes", "Bytes of KV saved in host RAM")
        self.counters = {
            field: Counter(f"{prefix}:{name}", doc, label, registry=registry)
            for field, (name, doc) in _COUNTERS.items()
        }
        self.ttft = histogram(
            "time_to_first_token_seconds", "Submission to first token", _LATENCY_BUCKETS
        )
        self.itl = histogram(
            "inter_token_latency_seconds", "Gap between streamed tokens", _TOKEN_GAP_BUCKETS
        )
        self.queue = histogram(
            "request_queue_time_seconds", "Waiting for admission", _LATENCY_BUCKETS
        )
        self.e2e = histogram(
            "e2e_request_latency_seconds", "Submission to finish", _LATENCY_BUCKETS
        )
        self.finished = Counter(
            f"{prefix}:request_success",
            "Finished requests by reason",
            [*label, "finished_reason"],
            registry=registry,
        )
        self._last: dict[str, dict[str, int]] = {}

    def update(self, stats: EngineStats) -> None:
        """Publish a snapshot; counters advance by what changed since the previous one."""
        model = stats.model_id
        self.running.labels(model).set(stats.running)
        self.waiting.labels(model).set(stats.waiting)
        self.kv_usage.labels(model).set(stats.kv_usage)
        self.kv_cached.labels(model).set(stats.kv_cells_cached)
        self.host_bytes.labels(model).set(stats.host_cache_bytes)
        last = self._last.setdefault(model, {})
        for field, counter in self.counters.items():
            value = int(getattr(stats, field))
            delta = value - last.get(field, 0)
            if delta > 0:
                counter.labels(model).inc(delta)
            last[field] = value

    def request_finished(
        self, model_id: str, finished: Finished, inter_token_s: Sequence[float]
    ) -> None:
        timings = finished.timings
        self.finished.labels(model_id, finished.finish_reason).inc()
        self.queue.labels(model_id).observe(timings.queue_s)
        if timings.time_to_first_token_s is not None:
            self.ttft.labels(model_id).observe(timings.time_to_first_token_s)
            self.e2e.labels(model_id).observe(timings.time_to_first_token_s + timings.decode_s)
        itl = self.itl.labels(model_id)
        for gap in inter_token_s:
            itl.observe(gap)


@functools.cache
def default_engine_metrics() -> EngineMetrics:
    """The process's engine metrics in the default registry (created once: names are global)."""
    return EngineMetrics()


# Understanding steps that run before generation: fast, so finer buckets.
_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class UnderstandingMetrics:
    """Latency of the classifiers and the embedder, as their callers see it.

    ``companion:classifier_latency_seconds{classifier, layer}``: one `classify`
    call (the shared embedding wait included), labelled by the layer that
    decided. ``companion:embedding_latency_seconds``: one `embed` call, from
    the request to the vectors (waiting for the shared batch included).
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        self.classifier = Histogram(
            f"{prefix}:classifier_latency_seconds",
            "One classification, by classifier and deciding layer",
            ["classifier", "layer"],
            registry=registry,
            buckets=_FAST_BUCKETS,
        )
        self.embedding = Histogram(
            f"{prefix}:embedding_latency_seconds",
            "One embed call, batching wait included",
            registry=registry,
            buckets=_FAST_BUCKETS,
        )


@functools.cache
def default_understanding_metrics() -> UnderstandingMetrics:
    """The process's classifier and embedder metrics (created once: names are global)."""
    return UnderstandingMetrics()
