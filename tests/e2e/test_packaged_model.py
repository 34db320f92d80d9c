"""The packaged default chat model served for real: SmolLM2-135M-Instruct, Q4_1.

Every other e2e test serves the tiny random F32 GGUF, so only this module runs
the model a zero-configuration `companion serve` loads through its quantized
kernels. That model crashed the server on the first chat on AMX CPUs; now the
engine has its own process and the weight repacking is probed in a child first
(inference/engines/llamacpp/repack.py). A few tokens per request: it is a
smoke test, not a benchmark.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from support import (
    BRIEF_PERSONA,
    RunningServer,
    admin_key,
    companion_env,
    first_turn,
    serving,
    signed_up,
)

from inference.engines.llamacpp.weights import copy_path
from models.packaged import packaged_model, packaged_path

MODEL_ID = packaged_model("chat").id


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture(scope="module")
def packaged_server(data_dir: Path) -> Iterator[RunningServer]:
    """`companion serve` on a fresh data dir with the default chat model, keys required."""
    (data_dir / "personas.toml").write_text(BRIEF_PERSONA, encoding="utf-8")
    env = companion_env(data_dir, COMPANION_API_KEYS_REQUIRED="true")
    for name in [n for n in env if n.startswith("COMPANION_CHAT_") or n == "COMPANION_CONFIG"]:
        del env[name]  # whatever this shell configures, the defaults are under test...
    env["COMPANION_CHAT_ENGINE"] = "llamacpp"  # ...on llama.cpp (auto: test_serve.py)
    created = admin_key(env)
    with serving(env, data_dir / "serve.log") as (base, process):
        yield RunningServer(base, created, MODEL_ID, process)


@pytest.fixture(scope="module")
def client(packaged_server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{packaged_server.base_url}/v1", api_key=packaged_server.admin_key, max_retries=0
    )


def engine_pids(server_pid: int) -> set[int]:
    """The server's child processes that run the chat engine (inference.engines.process)."""
    pids: set[int] = set()
    for children in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue  # it ended meanwhile (the repack probe, a psql)
            if b"inference.engines.process.worker" in command:
                pids.add(int(pid))
    return pids


def test_the_default_model_is_served_and_its_repack_decision_recorded(
    client: openai.OpenAI, data_dir: Path
) -> None:
    assert client.models.list().data[0].id == MODEL_ID  # loaded models come first
    entries = json.loads((data_dir / "engines" / "repack.json").read_text(encoding="utf-8"))
    # probed on what the engine loads: the Q8_0 copy of the packaged Q4_1 weights
    loaded = copy_path(packaged_path("chat"), data_dir / "engines")
    assert loaded.exists()
    probed = [e for e in entries.values() if Path(e["model"]) == loaded]
    assert probed, entries
    outcome = probed[0]["outcome"]
    assert outcome == "ok" or outcome.startswith("killed by "), outcome
    assert probed[0]["repack"] == (outcome == "ok")


def test_openai_sdk_streams_a_few_tokens(
    client: openai.OpenAI, packaged_server: RunningServer
) -> None:
    engines = engine_pids(packaged_server.process.pid)
    assert len(engines) == 1  # by default the engine has a process of its own
    stream = client.chat.completions.create(
        model=MODEL_ID,
        messages=[{"role": "user", "content": "Hi! I adopted a cat called Miso."}],
        max_tokens=8,
        stream=True,
    )
    chunks = [chunk for chunk in stream if chunk.choices]
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}
    assert {c.model for c in chunks} == {MODEL_ID}
    assert packaged_server.process.poll() is None
    assert engine_pids(packaged_server.process.pid) == engines  # not restarted after a crash


def test_a_companion_turn_streams_and_finishes(packaged_server: RunningServer) -> None:
    engines = engine_pids(packaged_server.process.pid)
    api = signed_up(packaged_server.base_url)
    events = first_turn(api, "brief", "Hello! How are you today?")
    assert events[0][0] == "meta" and events[0][1]["model"] == MODEL_ID
    assert events[-1][0] == "done", events[-3:]
    assert "".join(str(data["text"]) for name, data in events if name == "token").strip()
    assert packaged_server.process.poll() is None
    assert engine_pids(packaged_server.process.pid) == engines
