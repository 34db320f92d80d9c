"""A real `companion serve` on the tiny model, keys required, shared by a module's tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import RunningServer, admin_key, companion_env, serving


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
        created = admin_key(env)
        with serving(env, Path(directory) / "serve.log") as (base, process):
            yield RunningServer(base, created, tiny_gguf.stem, process)
