"""Helpers for tests that run `companion` as an operator would: a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sse_events import sse_events

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]
READY_DEADLINE_S = 60  # the foundation issue's bar for a fresh start; a guard, not a timing test
# An operator's persona (<data dir>/personas.toml) that keeps a companion turn short.
BRIEF_PERSONA = """\
[personas.brief]
name = "Brief"
description = "Answers in a few words."
prompt = "You are a friendly companion. Answer in a few words."
max_tokens = 8
"""


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
    """This process's environment without database URLs, plus a data dir and ``extra``.

    The chat engine is llama.cpp unless ``extra`` says otherwise: the default, ``auto``,
    measures every installed engine on a fresh data dir (minutes with vLLM installed),
    which the zero-setup test in test_serve.py does once for the suite.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {
        **env,
        "COMPANION_DATA_DIR": str(data_dir),
        "COMPANION_LOG_LEVEL": "warning",
        "COMPANION_CHAT_ENGINE": "llamacpp",
        **extra,
    }


def admin_key(env: dict[str, str]) -> str:
    """An admin API key, made with `companion keys create` as an operator would."""
    created = subprocess.run(
        [*COMPANION, "keys", "create", "operator", "--admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return created.stdout.strip()


def wait_ready(
    base_url: str,
    process: subprocess.Popen[str],
    log: Path | None = None,
    ready_s: float = READY_DEADLINE_S,
) -> httpx.Response:
    """Poll /health/ready until it answers 200; fail if the server exits or takes too long.

    The server's stderr is ``log`` when it writes to a file, else its pipe.
    """
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text() if log is not None else process.communicate()[1]
            pytest.fail(f"serve exited early: {(output or '')[-3000:]}")
        try:
            response = httpx.get(f"{base_url}/health/ready", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"/health/ready did not answer 200 within {ready_s}s")


@contextmanager
def serving(
    env: dict[str, str], log: Path, *args: str, ready_s: float = READY_DEADLINE_S
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`companion serve` on a free port: its base URL and process once ready; SIGTERM after.

    Its stderr goes to the file ``log``: a pipe nobody reads fills up when the
    server logs a lot (tracebacks while Redis is down) and then blocks it.
    """
    port = free_port()
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [*COMPANION, "serve", "--port", str(port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log, ready_s)
        yield base, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def signed_up(base_url: str) -> httpx.Client:
    """A new user's client for the companion API (``/api/v1``, their access token)."""
    api = httpx.Client(base_url=f"{base_url}/api/v1", timeout=120)
    credentials = {"username": f"u{uuid.uuid4().hex[:10]}", "password": "a long enough secret"}
    assert api.post("/auth/register", json=credentials).status_code == 201
    token = api.post("/auth/login", json=credentials).json()["access_token"]
    api.headers["Authorization"] = f"Bearer {token}"
    return api


def first_turn(api: httpx.Client, persona: str, text: str) -> list[tuple[str, Any]]:
    """A new conversation with ``persona`` and its first turn, streamed: the SSE events."""
    conversation = api.post("/conversations", json={"persona": persona}).json()
    streamed = api.post(
        f"/conversations/{conversation['id']}/messages",
        json={"content": text},
        headers={"Accept": "text/event-stream"},
    )
    return sse_events(streamed.text)
