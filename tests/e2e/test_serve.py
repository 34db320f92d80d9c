"""`companion serve` as an operator runs it: zero setup, ready, clean stop; refusals; doctor."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
import threading
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


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM; the exit status and what the server wrote to stderr."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    return process.returncode, stderr


def stderr_line(process: subprocess.Popen[str], start: str, guard_s: float = 30) -> str:
    """The first line of the server's stderr that begins with ``start`` (read as it comes)."""
    assert process.stderr is not None
    found: list[str] = []

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            if line.startswith(start):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(guard_s)
    assert found, f"no line starting {start!r} on stderr"
    return found[0]


def test_zero_setup_serve_is_ready_then_stops_its_databases(data_dir: Path) -> None:
    port = free_port()
    process = serve(data_dir, port)
    try:
        ready = wait_ready(f"http://127.0.0.1:{port}", process)
        # zero setup includes the packaged chat model on the llama.cpp engine
        assert set(ready.json()["components"]) == {"database", "redis", "engine"}
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        assert (data_dir / "redis" / "redis.sock").exists()
        # then what to do next: the web chat, the /v1 base URL, where the data lives
        line = stderr_line(process, "Companion is ready")
    finally:
        code, _ = stop(process)
    assert code == 0  # a requested stop that completed cleanly
    base = f"http://127.0.0.1:{port}"
    assert f"{base}/ " in line and f"{base}/v1 " in line and str(data_dir) in line


def test_a_taken_port_is_one_sentence_naming_the_flag(data_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve(data_dir, port)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"port {port}" in stderr and "--port" in stderr, stderr
    assert "Traceback" not in stderr
    assert not (data_dir / "postgres").exists()  # refused before starting anything
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
