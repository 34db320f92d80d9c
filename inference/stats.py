"""Engine statistics as small dataclasses, and the observer an engine reports requests to.

Engines fill these; `inference.metrics` turns them into Prometheus metrics.
Keeping the two apart lets tests read the numbers without a registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from inference.types import Finished


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of one engine. Counters are totals since the engine started."""

    model_id: str
    running: int
    waiting: int
    kv_cells_total: int
    kv_cells_used: int  # held by running sequences
    kv_cells_cached: int  # held only by idle sequences kept for reuse (reclaimable)
    prefix_queried_tokens: int  # prompt tokens looked up in the prefix cache
    prefix_hit_tokens: int  # of those, served from cache instead of computed
    prompt_tokens: int
    generated_tokens: int
    host_cache_bytes: int
    host_cache_entries: int
    preemptions: int = 0
    reported_kv_usage: float | None = None  # from an upstream's metrics, when cells are unknown

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV cache held by running sequences (0..1)."""
        if self.reported_kv_usage is not None:
            return self.reported_kv_usage
        return self.kv_cells_used / self.kv_cells_total if self.kv_cells_total else 0.0


class EngineObserver(Protocol):
    """Told about every finished request (called from the engine's thread)."""

    def request_finished(
        self, model_id: str, finished: Finished, inter_token_s: Sequence[float]
    ) -> None: ...
