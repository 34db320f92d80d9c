"""A real `companion serve` on the tiny model, keys required, shared by a module's tests."""

from __future__ import annotations

import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import COMPANION, RunningServer, companion_env, free_port, wait_ready


@pytest.fixture(scope="module")
def server(tiny_gguf: Path) -> Iterator[RunningServer]:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        env = companion_env(
            Path(directory),
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX="2048",
            COMPANION_CHAT_SLOTS="4",
            COMPANION_API_KEYS_REQUIRED="true",
        )
        created = subprocess.run(
            [*COMPANION, "keys", "create", "operator", "--admin"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        port = free_port()
        process = subprocess.Popen(
            [*COMPANION, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process)
            yield RunningServer(base, created.stdout.strip(), tiny_gguf.stem, process)
        finally:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=60)
