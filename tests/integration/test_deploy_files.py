"""The deployment files against the running app: Grafana asks only for metrics it exports;
nginx accepts its configuration (where nginx is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY, CollectorRegistry, Metric

from inference.gpu import GpuMetrics
from inference.metrics import default_engine_metrics, default_understanding_metrics
from inference.response_cache import default_response_cache_metrics
from memory.metrics import default_memory_metrics
from server.app import create_app
from server.settings import Settings
from server.turn.metrics import default_turn_metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "companion.json"
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exposed_names(families: list[Metric]) -> set[str]:
    """Every series name a family can expose (labelled families may have no samples yet)."""
    names = set()
    for family in families:
        names |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


async def test_grafana_queries_only_metrics_the_app_exports(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/live")).status_code == 200  # the HTTP metrics exist now
        default_understanding_metrics()  # registered on first use by the embedder and classifiers
        default_memory_metrics()  # by retrieval and the job queue
        default_engine_metrics()  # by the model manager when it opens an engine
        default_response_cache_metrics()  # by the cache layer around each engine
        default_turn_metrics()  # by the chat turn service (none without an engine)
        families = list(REGISTRY.collect())
    families += _gpu_families()
    exported = exposed_names(families)

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = {name for q in queries for name in re.findall(r"companion[:_][A-Za-z0-9_:]+", q)}
    assert len(asked) >= 25
    assert asked <= exported, sorted(asked - exported)
    others = {n for q in queries for n in re.findall(r"\b([a-z]+):[a-z_]+", q)} - {"companion"}
    assert others <= {"vllm"}  # the only other source is vLLM's own /metrics


def _gpu_families() -> list[Metric]:
    """NVML gauges exist only where there are GPUs: take their names from the class."""
    registry = CollectorRegistry()
    GpuMetrics(registry)
    return list(registry.collect())


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_nginx_accepts_the_configuration(tmp_path: Path) -> None:
    config = (ROOT / "deploy" / "nginx.conf").read_text(encoding="utf-8")
    # No Docker DNS here: point the upstream at a literal address. Before 1.27.3, open-source
    # nginx has no `resolve` on upstream servers; the image in compose.gpu.yml does.
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=True).stderr
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", version)
    assert found is not None
    upstream = "server 127.0.0.1:8000 resolve"
    if tuple(int(part) for part in found.groups()) < (1, 27, 3):
        upstream = "server 127.0.0.1:8000"
    config = config.replace("server api:8000 resolve", upstream)
    config = config.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    path = tmp_path / "nginx.conf"
    path.write_text(config, encoding="utf-8")
    result = subprocess.run(
        ["nginx", "-t", "-c", str(path), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
