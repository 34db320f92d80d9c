"""`companion serve` as an operator runs it: zero setup, ready, clean stop; refusals; doctor."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import COMPANION, companion_env, free_port, wait_ready


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        yield Path(directory)


def serve(data_dir: Path, port: int, *args: str) -> subprocess.Popen[str]:
    env = companion_env(data_dir)
    return subprocess.Popen(
        [*COMPANION, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=60)
    return process.returncode


def test_zero_setup_serve_is_ready_then_stops_its_databases(data_dir: Path) -> None:
    port = free_port()
    process = serve(data_dir, port)
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", process)
        # zero setup includes the packaged chat model on the llama.cpp engine
        assert set(ready.json()["components"]) == {"database", "redis", "engine"}
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        assert (data_dir / "redis" / "redis.sock").exists()
    finally:
        code = stop(process)
    assert code == 0  # a requested stop that completed cleanly
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "redis.sock").exists()


@pytest.mark.slow
def test_several_workers_share_the_embedded_servers_and_metrics(data_dir: Path) -> None:
    port = free_port()
    process = serve(data_dir, port, "--workers", "2")
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        for _ in range(6):
            httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=5)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'path="/health/live"' in metrics
        assert any(p.name.endswith(".db") for p in (data_dir / "prometheus").iterdir())
    finally:
        stop(process)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


def test_production_refuses_to_start_and_lists_every_problem(data_dir: Path) -> None:
    env = companion_env(
        data_dir,
        COMPANION_ENV="production",
        COMPANION_CORS_ORIGINS="*",
        COMPANION_JWT_SECRET="too-short",
    )
    result = subprocess.run(
        [*COMPANION, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    for variable in ("COMPANION_JWT_SECRET", "COMPANION_CORS_ORIGINS", "DATABASE_URL", "REDIS_URL"):
        assert variable in result.stderr
    assert "too-short" not in result.stderr
    assert not (data_dir / "postgres").exists()  # refused before anything started


def test_doctor_masks_secrets_and_reports_unreachable_services(data_dir: Path) -> None:
    port = free_port()  # nothing listens there
    env = companion_env(
        data_dir,
        DATABASE_URL=f"postgresql://app:hunter2@127.0.0.1:{port}/companion",
        COMPANION_JWT_SECRET="x" * 40,
    )
    result = subprocess.run(
        [*COMPANION, "doctor"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "hunter2" not in result.stdout and "x" * 40 not in result.stdout
    assert "postgresql://app:***@127.0.0.1" in result.stdout
    assert "FAIL unreachable" in result.stdout
    assert "smollm2-135m-instruct" in result.stdout
