"""Runs only where CUDA is present (see tests/conftest.py)."""

from __future__ import annotations

import pytest

from inference.gpu import read_gpus

pytestmark = pytest.mark.gpu


def test_nvml_reports_every_gpu() -> None:
    samples = read_gpus()
    assert samples, "nvidia-smi is present but NVML reported no GPU (is nvidia-ml-py installed?)"
    for sample in samples:
        assert sample.memory_total_bytes > 0
        assert 0 <= sample.utilization_pct <= 100
