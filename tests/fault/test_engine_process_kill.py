"""SIGKILL of the engine process under a running `companion serve`.

The chat engine runs in a process of its own; killing it mid-stream must
leave the API answering: the open stream ends with an SSE ``error`` event,
readiness says 503 until the supervisor has started a new engine process
(within 30 s), the next turn succeeds, and no acknowledged message is lost.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sse_events import iter_sse_events, sse_events
from support import companion_env, serving

pytestmark = pytest.mark.slow

BACK_WITHIN_S = 30  # the bar for the engine to be back


def engine_pids(server_pid: int) -> list[int]:
    """The engine processes `companion serve` ``server_pid`` started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server_pid and b"inference.engines.process.worker" in command:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def server(tiny_gguf: Path) -> Iterator[tuple[str, int, Path]]:
    with tempfile.TemporaryDirectory(prefix="cmpk-", dir="/tmp") as directory:
        root = Path(directory)
        env = companion_env(
            root / "app",
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX="2048",
            COMPANION_CHAT_SLOTS="4",
            COMPANION_RATE_LIMITS="false",
            COMPANION_RESPONSE_CACHE_TTL="0",
            COMPANION_API_KEYS_REQUIRED="false",
        )
        log = root / "serve.log"
        with serving(env, log) as (base, process):
            yield base, process.pid, log


def signed_up(api: httpx.Client) -> dict[str, str]:
    credentials = {"username": f"k{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert api.post("/auth/register", json=credentials).status_code == 201
    token = api.post("/auth/login", json=credentials).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def kill_engine_when_streaming(
    response: httpx.Response, server_pid: int
) -> list[tuple[str, dict[str, object]]]:
    """Read the stream; SIGKILL the engine at its first token; return every event."""
    events = []
    (engine,) = engine_pids(server_pid)
    for name, data in iter_sse_events(response.iter_lines()):
        events.append((name, data))
        if name == "token" and sum(n == "token" for n, _ in events) == 1:
            os.kill(engine, signal.SIGKILL)
    return events


def ready_again(base_url: str, old_engine: int, server_pid: int) -> bool:
    deadline = time.monotonic() + BACK_WITHIN_S
    while time.monotonic() < deadline:
        pids = engine_pids(server_pid)
        ready = httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200
        if ready and pids and old_engine not in pids:
            return True
        time.sleep(0.2)
    return False


def test_engine_killed_mid_turn(server: tuple[str, int, Path]) -> None:
    base_url, server_pid, log = server
    api = httpx.Client(base_url=f"{base_url}/api/v1", timeout=120)
    auth = signed_up(api)
    stream = {**auth, "Accept": "text/event-stream"}
    conversation = api.post("/conversations", json={}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    first = api.post(url, json={"content": "Hi, I'm Sam."}, headers=stream)
    assert first.status_code == 200 and '"event": "done"' not in first.text  # sanity
    acknowledged = api.get(url, headers=auth).json()
    assert [m["role"] for m in acknowledged] == ["user", "assistant"]

    (old_engine,) = engine_pids(server_pid)
    with api.stream("POST", url, json={"content": "Tell me a story."}, headers=stream) as killed:
        events = kill_engine_when_streaming(killed, server_pid)
    assert events[0][0] == "meta" and events[-1][0] == "error", events
    assert "stopped" in str(events[-1][1].get("message", "")), events[-1]

    assert httpx.get(f"{base_url}/health/live", timeout=5).status_code == 200
    assert ready_again(base_url, old_engine, server_pid), log.read_text()[-3000:]
    again = api.post(url, json={"content": "I like tea."}, headers=stream)
    names = [n for n, _ in sse_events(again.text)]
    assert names[-1] == "done", again.text

    history = api.get(url, headers=auth).json()
    kept = {m["id"]: m["content"] for m in history}
    assert all(kept.get(m["id"]) == m["content"] for m in acknowledged)
    assert history[-2]["content"] == "I like tea." and history[-1]["role"] == "assistant"
    assert "unhandled error" not in log.read_text()


def test_engine_killed_mid_v1_stream(server: tuple[str, int, Path]) -> None:
    base_url, server_pid, log = server
    (old_engine,) = engine_pids(server_pid)
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count to a thousand."}],
        "max_tokens": 500,
        "stream": True,
    }
    chunks = []
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            chunks.append(line)
            if len(chunks) == 2:
                os.kill(old_engine, signal.SIGKILL)
    # as vLLM's server does it: an error event, then the end of the stream
    assert chunks[-1] == "data: [DONE]" and '"error"' in chunks[-2], chunks[-3:]
    assert "stopped" in json.loads(chunks[-2][len("data: ") :])["error"]["message"]

    assert ready_again(base_url, old_engine, server_pid), log.read_text()[-3000:]
    done = httpx.post(
        f"{base_url}/v1/chat/completions", json={**body, "stream": False, "max_tokens": 8}
    )
    assert done.status_code == 200, done.text
    assert done.json()["choices"][0]["message"]["content"]
