"""Prometheus metrics of the memory tier: retrieval latency and the job queue.

Named like the engine metrics (``companion:...``); `memory` keeps its own
module since it never imports `inference`. Works in Prometheus multiprocess
mode: the queue gauges describe one shared Redis queue, so every process
reports the same numbers and the most recent sample wins.

ARCHITECTURE: the queue reading (`QueueSample`) is defined here, with the
gauges it feeds, rather than in `memory.jobs` which produces it: jobs imports
this module, and this module imports nothing of the memory package.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_FAST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True, slots=True)
class QueueSample:
    """One reading of a queue: jobs by state and how long the oldest has been waiting.

    `memory.jobs.read_queue` takes it; `MemoryMetrics.update_queue` publishes it.
    """

    queue: str
    queued: int  # ready, waiting for a worker
    active: int
    scheduled: int  # waiting for their time (retries with backoff, cron)
    oldest_age_s: float  # of the job at the head of the queue; 0 when none waits


class MemoryMetrics:
    """Retrieval latency; job outcomes and durations; queue depth and the oldest job's age."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(
                f"{prefix}:{name}", doc, labels, registry=registry, multiprocess_mode="mostrecent"
            )

        self.retrieval = Histogram(
            f"{prefix}:retrieval_latency_seconds",
            "One long-term memory retrieval (query embedding and both searches)",
            registry=registry,
            buckets=_FAST_BUCKETS,
        )
        self.jobs = Counter(
            f"{prefix}:jobs",
            "Job attempts by outcome: complete, failed (for good), retried, aborted",
            ["queue", "function", "status"],
            registry=registry,
        )
        self.job_duration = Histogram(
            f"{prefix}:job_duration_seconds",
            "One job attempt, start to end",
            ["queue", "function"],
            registry=registry,
            buckets=_JOB_BUCKETS,
        )
        self.queue_depth = gauge(
            "job_queue_depth", "Jobs by state: queued, active, scheduled", ["queue", "state"]
        )
        self.oldest_age = gauge(
            "job_queue_oldest_age_seconds", "Age of the oldest job waiting (0: none)", ["queue"]
        )

    def retrieval_done(self, seconds: float) -> None:
        """Time one long-term memory retrieval (`LongTermMemory.retrieve`)."""
        self.retrieval.observe(seconds)

    def update_queue(self, sample: QueueSample) -> None:
        """Publish one reading of the queue."""
        for state, count in (
            ("queued", sample.queued),
            ("active", sample.active),
            ("scheduled", sample.scheduled),
        ):
            self.queue_depth.labels(sample.queue, state).set(count)
        self.oldest_age.labels(sample.queue).set(sample.oldest_age_s)

    def job_done(self, queue: str, function: str, status: str, duration_s: float | None) -> None:
        """Count one finished attempt (``status``: complete, failed, retried or aborted)."""
        self.jobs.labels(queue, function, status).inc()
        if duration_s is not None:
            self.job_duration.labels(queue, function).observe(max(duration_s, 0.0))


@functools.cache
def default_memory_metrics() -> MemoryMetrics:
    """The process's memory metrics in the default registry (created once: names are global)."""
    return MemoryMetrics()
