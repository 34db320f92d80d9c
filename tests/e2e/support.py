"""Helpers for tests that run `companion` as an operator would: a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]
READY_DEADLINE_S = 60  # the foundation issue's bar for a fresh start; a guard, not a timing test


@dataclass(frozen=True)
class RunningServer:
    """A `companion serve` started by a fixture: where it is and how to call it."""

    base_url: str
    admin_key: str
    model_id: str
    process: subprocess.Popen[str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def companion_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without database URLs, plus a data dir and ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "COMPANION_DATA_DIR": str(data_dir), "COMPANION_LOG_LEVEL": "warning", **extra}


def wait_ready(base_url: str, process: subprocess.Popen[str]) -> httpx.Response:
    """Poll /health/ready until it answers 200; fail if the server exits or takes too long."""
    deadline = time.monotonic() + READY_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"serve exited early: {process.communicate()[1][-3000:]}")
        try:
            response = httpx.get(f"{base_url}/health/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"/health/ready did not answer 200 within {READY_DEADLINE_S}s")
