"""Prometheus metrics of chat turns: ``companion:turn_step_seconds{step}``.

`TurnMetrics` is the `StepObserver` turns report to; the steps are described in
`server.turn.orchestrator`.
"""

from __future__ import annotations

import functools

from prometheus_client import REGISTRY, CollectorRegistry, Histogram

_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class TurnMetrics:
    """The step histogram of chat turns."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        self.steps = Histogram(
            f"{prefix}:turn_step_seconds",
            "Seconds spent in each step of a chat turn (see server.turn.orchestrator)",
            ["step"],
            registry=registry,
            buckets=_STEP_BUCKETS,
        )

    def step_timed(self, step: str, seconds: float) -> None:
        self.steps.labels(step).observe(seconds)


@functools.cache
def default_turn_metrics() -> TurnMetrics:
    """The process's turn metrics in the default registry (created once: names are global)."""
    return TurnMetrics()
