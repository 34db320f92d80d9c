"""A real `companion serve` on the tiny model, keys required, shared by a module's tests."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import COMPANION, RunningServer, companion_env, serving


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
        with serving(env, Path(directory) / "serve.log") as (base, process):
            yield RunningServer(base, created.stdout.strip(), tiny_gguf.stem, process)
