"""The dashboard's stats under `companion serve --workers 2`: whichever worker answers,
the numbers are the whole instance's (read from the multiprocess registry)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import admin_key, companion_env, serving

DEADLINE_S = 60.0  # for the engine's counters to be published; a guard, not a timing test


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.mark.slow
def test_stats_add_up_every_worker(tiny_gguf: Path, data_dir: Path) -> None:
    env = companion_env(
        data_dir,
        COMPANION_CHAT_MODEL=str(tiny_gguf),
        COMPANION_CHAT_CTX="1024",
        COMPANION_CHAT_SLOTS="2",
        COMPANION_EMBEDDER="none",
        COMPANION_API_KEYS_REQUIRED="true",
    )
    admin = admin_key(env)
    headers = {"Authorization": f"Bearer {admin}"}
    with serving(env, data_dir / "serve.log", "--workers", "2") as (base, _):
        assert httpx.get(f"{base}/api/v1/admin/stats", timeout=10).status_code == 401
        page = httpx.get(f"{base}/dashboard", timeout=10)
        assert page.status_code == 200 and "dashboard.js" in page.text
        generated = 0
        for _ in range(4):  # spread over both workers
            reply = httpx.post(
                f"{base}/v1/chat/completions",
                json={
                    "model": tiny_gguf.stem,
                    "messages": [{"role": "user", "content": "Hi"}],
                    "max_tokens": 6,
                },
                headers=headers,
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            generated += reply.json()["usage"]["completion_tokens"]
        deadline = time.monotonic() + DEADLINE_S
        while True:
            report = httpx.get(f"{base}/api/v1/admin/stats", headers=headers, timeout=10).json()
            if report["totals"]["generated_tokens"] >= generated:
                break
            assert time.monotonic() < deadline, report["totals"]
            time.sleep(0.5)
        assert report["totals"]["finished_requests"] >= 4
        assert any(p["ttft_s"][0] is not None for p in report["points"])
