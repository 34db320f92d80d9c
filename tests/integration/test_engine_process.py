"""The llama.cpp engine in a process of its own (`ProcessEngine`), on the tiny model.

Faults are real: the engine process is sent SIGKILL or SIGSEGV (what a native
crash in a kernel looks like from outside), and the API side must keep
answering, restart it, and serve the next request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from inference.config import (
    AUTO_UNIFIED_CELLS,
    KV_MEMORY_SHARE,
    PER_SLOT_MIN_CELLS,
    ChatEngineConfig,
    LlamaCppOptions,
)
from inference.engines.llamacpp.weights import copy_path
from inference.engines.process import ProcessEngine
from inference.errors import (
    DeadlineExceeded,
    EngineOverloaded,
    EngineUnavailable,
    InvalidRequest,
)
from inference.factory import create_engine
from inference.machine import machine_memory
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    StreamEvent,
    TextDelta,
)

WAIT_S = 30  # guards for a restart; never a timing assertion
_ids = itertools.count()

Factory = Callable[..., ProcessEngine]


class Recorder:
    """An `EngineObserver` that keeps what it is told."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, Finished]] = []

    def request_finished(self, model_id: str, finished: Finished, inter_token_s: object) -> None:
        self.finished.append((model_id, finished))


@pytest.fixture
async def make_engine(tiny_gguf: Path, tmp_path: Path) -> AsyncIterator[Factory]:
    engines: list[ProcessEngine] = []

    def make(observer: Recorder | None = None, **overrides: object) -> ProcessEngine:
        settings: dict[str, object] = {
            "model_path": tiny_gguf,
            "model_id": "tiny",
            "n_ctx": 2048,
            "n_slots": 4,
            "llamacpp": LlamaCppOptions(n_threads=1),
            "state_dir": tmp_path / "engines",
        }
        names = ("restart_wait_s", "backoff_s", "stall_s")
        timing = {k: overrides.pop(k) for k in names if k in overrides}
        settings.update(overrides)
        config = ChatEngineConfig(**settings)  # type: ignore[arg-type]
        engine = create_engine(config, observer)
        assert isinstance(engine, ProcessEngine)  # the default for llama.cpp
        if timing:
            engine = ProcessEngine(config, observer, **timing)  # type: ignore[arg-type]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


def request(
    text: str = "Tell me a story.", max_tokens: int = 8, **extra: object
) -> GenerationRequest:
    fields: dict[str, object] = {
        "request_id": f"p{next(_ids)}",
        "user_id": "alice",
        "messages": [ChatMessage("user", text)],
        "sampling": SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
    }
    fields.update(extra)
    return GenerationRequest(**fields)  # type: ignore[arg-type]


async def collect(engine: ProcessEngine, req: GenerationRequest) -> list[StreamEvent]:
    return [event async for event in engine.generate(req)]


def text_of(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead too
        return stat.read().split(")")[-1].split()[0] != "Z"


async def test_the_engine_runs_in_another_process_and_answers_like_inline(
    make_engine: Factory,
) -> None:
    engine = make_engine()
    await engine.start()
    assert engine.pid is not None and engine.pid != os.getpid()
    separate = await collect(engine, request())
    inline = create_engine(engine.config)  # the same engine, in this process
    assert inline is not None and not isinstance(inline, ProcessEngine)
    await inline.start()
    try:
        same = await collect(inline, request())
    finally:
        await inline.close()
    assert text_of(separate) == text_of(same) and text_of(same)
    finished = separate[-1]
    assert isinstance(finished, Finished) and finished.usage.completion_tokens == 8


async def test_by_default_the_packaged_model_gets_cells_of_its_own_for_every_slot(
    tmp_path: Path,
) -> None:
    """The default install's engine (COMPANION_CHAT_CTX=0, 16 slots, the packaged Q4_1
    model) is sized per slot where the machine has the memory (CI's and a laptop's of
    16 GiB and more: 1.5 GB of KV), loads the Q8_0 copy of the weights (made once, in
    this process: a restarted child loads it as it is), and two users' conversations
    decode side by side."""
    from models.packaged import packaged_path

    model = packaged_path("chat")
    config = ChatEngineConfig(llamacpp=LlamaCppOptions(n_threads=1), state_dir=tmp_path)
    assert config.n_ctx == 0 and config.n_slots == 16
    engine = create_engine(config)
    assert isinstance(engine, ProcessEngine) and engine.config.model_path == model
    enough = machine_memory() >= 16 * PER_SLOT_MIN_CELLS * 23_040 * KV_MEMORY_SHARE
    assert engine.config.n_ctx == (16 * PER_SLOT_MIN_CELLS if enough else AUTO_UNIFIED_CELLS)
    assert engine.config.llamacpp.per_slot(engine.config.n_ctx, 16) == enough
    await engine.start()
    try:
        assert engine.config.model_path == copy_path(model, tmp_path)
        assert engine.config.model_path.exists() and engine.config.llamacpp.weights == "as-is"
        alice = request("Hello! How was your day?", max_tokens=16)
        bob = request("Tell me about the sea.", max_tokens=16, user_id="bob")
        answers = await asyncio.gather(collect(engine, alice), collect(engine, bob))
        await until(lambda: engine.stats().kv_cells_total > 0, "the child's stats")
        assert engine.stats().kv_cells_total == engine.config.n_ctx  # what the child built
    finally:
        await engine.close()
    for events in answers:
        finished = events[-1]
        assert isinstance(finished, Finished) and finished.usage.completion_tokens == 16
        assert text_of(events).strip()


async def test_errors_cross_the_boundary_as_their_own_kind(make_engine: Factory) -> None:
    engine = make_engine()
    await engine.start()
    with pytest.raises(InvalidRequest, match="prompt token ids"):
        await collect(engine, request(messages=(), prompt_tokens=[10**9]))
    await collect(engine, request())  # the process serves on


async def test_stats_and_observations_reach_this_process(make_engine: Factory) -> None:
    observed = Recorder()
    engine = make_engine(observed)
    await engine.start()
    await collect(engine, request(max_tokens=5))
    await until(lambda: engine.stats().generated_tokens >= 5, "a stats snapshot")
    assert engine.stats().kv_cells_total == 2048
    await until(lambda: bool(observed.finished), "the finished request's timings")
    model_id, finished = observed.finished[0]
    assert model_id == "tiny" and finished.usage.completion_tokens == 5


async def test_sigkill_mid_stream_fails_that_request_and_the_next_one_is_served(
    make_engine: Factory,
) -> None:
    engine = make_engine()
    await engine.start()
    before = engine.pid
    assert before is not None
    await collect(engine, request(max_tokens=4))
    await until(lambda: engine.stats().generated_tokens >= 4, "a stats snapshot")
    counted = engine.stats().generated_tokens

    stream = engine.generate(request(max_tokens=1000))
    first = await anext(stream)
    assert isinstance(first, TextDelta)
    os.kill(before, signal.SIGKILL)
    with pytest.raises(EngineUnavailable, match="SIGKILL"):
        async for _ in stream:
            pass

    after = await collect(engine, request())  # waits for the restart, then is served
    assert text_of(after) and engine.pid not in (None, before)
    assert engine.restarts == 1
    await engine.health()
    assert not alive(before)
    assert engine.stats().generated_tokens >= counted  # totals never go backwards


async def test_a_native_crash_is_contained_and_queued_requests_are_served(
    make_engine: Factory,
) -> None:
    engine = make_engine(n_slots=1, n_ctx=2048)
    await engine.start()
    pid = engine.pid
    assert pid is not None
    running = engine.generate(request(max_tokens=1000))
    await anext(running)  # holds the only slot
    queued = asyncio.create_task(collect(engine, request(user_id="bob")))
    await until(lambda: engine.stats().waiting == 1, "the second request to queue")
    os.kill(pid, signal.SIGSEGV)  # what a fault in a kernel does to the process
    with pytest.raises(EngineUnavailable, match="SIGSEGV"):
        async for _ in running:
            pass
    assert text_of(await asyncio.wait_for(queued, WAIT_S))  # served by the new process


async def test_while_it_restarts_health_says_why_and_requests_get_a_retry_hint(
    make_engine: Factory,
) -> None:
    engine = make_engine(restart_wait_s=0.2, backoff_s=3.0)
    await engine.start()
    await engine.health()
    pid = engine.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await until(lambda: engine.pid is None, "the death to be noticed")
    with pytest.raises(EngineUnavailable, match="SIGKILL"):
        await engine.health()
    with pytest.raises(EngineOverloaded, match="restarting") as refused:
        await collect(engine, request())
    assert refused.value.retry_after_s >= 1  # 503 with Retry-After at the edge
    await until(lambda: engine.pid is not None, "the restart")
    await engine.health()
    assert text_of(await collect(engine, request()))


async def test_a_model_that_cannot_load_fails_start_with_the_reason(
    make_engine: Factory, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    engine = make_engine(model_path=broken)
    with pytest.raises(EngineUnavailable, match="could not load model"):
        await engine.start()


async def test_close_stops_the_engine_process(make_engine: Factory) -> None:
    engine = make_engine()
    await engine.start()
    pid = engine.pid
    assert pid is not None
    await engine.close()
    assert not alive(pid)
    with pytest.raises(EngineUnavailable):
        await collect(engine, request())


_ORPHAN = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from inference.config import ChatEngineConfig
    from inference.factory import create_engine

    async def main():
        engine = create_engine(ChatEngineConfig(model_path=Path(sys.argv[1]), n_ctx=512))
        await engine.start()
        print(engine.pid, flush=True)
        await asyncio.sleep(600)

    asyncio.run(main())
    """
)


async def test_the_engine_process_does_not_outlive_a_killed_server(tiny_gguf: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN, str(tiny_gguf)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(server.stdout.readline), WAIT_S)
        engine_pid = int(line)
        assert alive(engine_pid)
        server.kill()  # no shutdown code runs
        server.wait()
        await until(lambda: not alive(engine_pid), "the orphaned engine to exit")
    finally:
        server.kill()
        server.wait()


async def test_a_wedged_engine_process_is_killed_and_replaced(make_engine: Factory) -> None:
    """SIGSTOP: the process neither answers nor exits, as when wedged in a kernel."""
    engine = make_engine(stall_s=1.0)
    await engine.start()
    pid = engine.pid
    assert pid is not None
    stream = engine.generate(request(max_tokens=1000, deadline_s=60))
    await anext(stream)
    os.kill(pid, signal.SIGSTOP)
    with pytest.raises(EngineUnavailable, match="SIGKILL"):  # the watchdog's kill
        async for _ in stream:
            pass
    assert text_of(await collect(engine, request()))
    assert engine.pid not in (None, pid) and not alive(pid)


async def test_a_request_past_its_deadline_is_given_up_even_if_the_engine_is_silent(
    make_engine: Factory,
) -> None:
    # no watchdog in time: only the deadline every request gets (COMPANION_CHAT_DEADLINE)
    engine = make_engine(stall_s=600.0, deadline_s=0.5)
    await engine.start()
    pid = engine.pid
    assert pid is not None
    stream = engine.generate(request(max_tokens=1000))  # sets no deadline of its own
    await anext(stream)
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(DeadlineExceeded):
            async for _ in stream:
                pass
    finally:
        os.kill(pid, signal.SIGCONT)
    assert text_of(await collect(engine, request()))  # the same process serves on
    assert engine.pid == pid
