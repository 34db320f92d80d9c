from __future__ import annotations

from inference.engines.upstream_metrics import parse_load

VLLM_SAMPLE = """\
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="llama"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="llama"} 0.75
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="llama"} 3.0
vllm:num_requests_waiting{engine="1",model_name="llama"} 2.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{engine="0",model_name="llama"} 1000.0
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{engine="0",model_name="llama"} 640.0
# HELP other_metric Not ours.
# TYPE other_metric gauge
other_metric 99.0
"""


def test_vllm_metrics_are_read_fullest_kv_and_summed_queue() -> None:
    load = parse_load(VLLM_SAMPLE, "vllm")
    assert load.kv_usage == 0.75
    assert load.waiting == 5.0
    assert (load.prefix_queries, load.prefix_hits) == (1000.0, 640.0)
    assert load.running == 0.0  # absent metrics read as zero


def test_another_prefix_sees_nothing() -> None:
    assert parse_load(VLLM_SAMPLE, "companion").kv_usage == 0.0
