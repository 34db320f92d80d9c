"""Reading an upstream's Prometheus metrics: KV usage, queue, prefix-cache counters.

vLLM exports ``vllm:kv_cache_usage_perc``, ``vllm:num_requests_waiting``,
``vllm:num_requests_running``, ``vllm:prefix_cache_queries_total`` and
``vllm:prefix_cache_hits_total``; this service exports the same names under
``companion:``. Values are summed over label sets (several engines or models
behind one server), except KV usage, where the fullest one counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True, slots=True)
class UpstreamLoad:
    kv_usage: float = 0.0
    waiting: float = 0.0
    running: float = 0.0
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0


def parse_load(text: str, prefix: str) -> UpstreamLoad:
    """The load figures in a Prometheus text exposition, for metric names under ``prefix``."""
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, []).append(float(sample.value))

    def total(name: str) -> float:
        return sum(values.get(f"{prefix}:{name}", ()))

    return UpstreamLoad(
        kv_usage=max(values.get(f"{prefix}:kv_cache_usage_perc", [0.0])),
        waiting=total("num_requests_waiting"),
        running=total("num_requests_running"),
        prefix_queries=total("prefix_cache_queries_total"),
        prefix_hits=total("prefix_cache_hits_total"),
    )
