"""GPU metrics from NVML (nvidia-ml-py): utilization, memory, power, temperature per GPU.

Without the package, the driver or a GPU, `read_gpus` returns an empty list:
metrics are then absent, never an error. `GpuMetrics` publishes samples as
Prometheus gauges (in multiprocess mode the most recent sample wins, since
every worker sees the same devices).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Gauge

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GpuSample:
    index: int
    name: str
    utilization_pct: float
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float | None
    temperature_c: float | None


def read_gpus() -> list[GpuSample]:
    """One sample per visible GPU; empty when there is no NVML or no GPU."""
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        return [_sample(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
    except nvml.NVMLError as exc:
        log.warning("NVML read failed", extra={"error": str(exc)})
        return []


def _nvml() -> Any:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver or no device: not an error on a CPU machine
    return pynvml


def _sample(nvml: Any, index: int) -> GpuSample:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    name = nvml.nvmlDeviceGetName(handle)
    return GpuSample(
        index=index,
        name=name.decode() if isinstance(name, bytes) else str(name),
        utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
        memory_used_bytes=int(memory.used),
        memory_total_bytes=int(memory.total),
        power_watts=_optional(lambda: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0, nvml),
        temperature_c=_optional(
            lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU), nvml
        ),
    )


def _optional(read: Any, nvml: Any) -> float | None:
    """Some boards do not report power or temperature: that reading is absent."""
    try:
        return float(read())
    except nvml.NVMLError:
        return None


class GpuMetrics:
    """Gauges per GPU, labelled by index and name."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        labels = ["gpu", "name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(
                f"{prefix}:{name}", doc, labels, registry=registry, multiprocess_mode="mostrecent"
            )

        self.utilization = gauge("gpu_utilization_perc", "GPU busy fraction (0..1)")
        self.memory_used = gauge("gpu_memory_used_bytes", "GPU memory in use")
        self.memory_total = gauge("gpu_memory_total_bytes", "GPU memory in total")
        self.power = gauge("gpu_power_watts", "GPU power draw")
        self.temperature = gauge("gpu_temperature_celsius", "GPU temperature")

    def update(self, samples: list[GpuSample]) -> None:
        for sample in samples:
            labels = (str(sample.index), sample.name)
            self.utilization.labels(*labels).set(sample.utilization_pct / 100.0)
            self.memory_used.labels(*labels).set(sample.memory_used_bytes)
            self.memory_total.labels(*labels).set(sample.memory_total_bytes)
            if sample.power_watts is not None:
                self.power.labels(*labels).set(sample.power_watts)
            if sample.temperature_c is not None:
                self.temperature.labels(*labels).set(sample.temperature_c)
