from __future__ import annotations

import shutil

import pytest
from prometheus_client import CollectorRegistry

from inference.gpu import GpuMetrics, GpuSample, read_gpus


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU is present")
def test_no_gpu_means_no_samples_and_no_error() -> None:
    assert read_gpus() == []


def test_samples_become_labelled_gauges() -> None:
    registry = CollectorRegistry()
    metrics = GpuMetrics(registry)
    sample = GpuSample(0, "H100", 87.0, 40 << 30, 80 << 30, 350.5, None)
    metrics.update([sample])
    labels = {"gpu": "0", "name": "H100"}
    assert registry.get_sample_value("companion:gpu_utilization_perc", labels) == 0.87
    assert registry.get_sample_value("companion:gpu_memory_total_bytes", labels) == 80 << 30
    assert registry.get_sample_value("companion:gpu_power_watts", labels) == 350.5
    assert registry.get_sample_value("companion:gpu_temperature_celsius", labels) is None
