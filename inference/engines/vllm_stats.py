"""What vLLM's scheduler reports, as the vLLM engine gathers it.

vLLM calls a stat logger on the event loop once per engine step with its
scheduler's figures (running and waiting requests, KV usage, prefix-cache
queries and hits) and the step's tokens and preemptions. `StatLogger`
keeps them in a `StepStats`: gauges from the last step, counters summed.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(slots=True)
class StepStats:
    """What vLLM's scheduler reported: gauges from its last step, counters summed."""

    running: int = 0
    waiting: int = 0
    kv_usage: float = 0.0
    queried: int = 0
    hits: int = 0
    prompt: int = 0
    generated: int = 0
    preemptions: int = 0

    def plus(self, other: StepStats) -> StepStats:
        """The counters of both summed (the totals across restarts); gauges at zero."""
        return StepStats(
            queried=self.queried + other.queried,
            hits=self.hits + other.hits,
            prompt=self.prompt + other.prompt,
            generated=self.generated + other.generated,
            preemptions=self.preemptions + other.preemptions,
        )


class StatLogger:
    """vLLM's stat logger interface (called on the event loop, once per engine step)."""

    def __init__(self, steps: StepStats) -> None:
        self._steps = steps

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        steps = self._steps
        if scheduler_stats is not None:
            steps.running = scheduler_stats.num_running_reqs
            steps.waiting = scheduler_stats.num_waiting_reqs
            steps.kv_usage = scheduler_stats.kv_cache_usage
            prefix = scheduler_stats.prefix_cache_stats
            steps.queried += prefix.queries
            steps.hits += prefix.hits
        if iteration_stats is not None:
            steps.prompt += iteration_stats.prompt_token_stats.total
            steps.generated += iteration_stats.num_generation_tokens
            steps.preemptions += iteration_stats.num_preempted_reqs

    def log_engine_initialized(self) -> None:
        pass

    def log(self) -> None:
        pass

    def record_sleep_state(self, is_awake: int, level: int) -> None:
        pass
