"""The response cache around the real tiny engine, on the session's Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from inference.response_cache import ResponseCache, cache_key
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
)


@pytest.fixture
async def cached(tiny_gguf: Path, shared_redis: Redis) -> AsyncIterator[ResponseCache]:
    engine = LlamaCppEngine(
        LlamaCppConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=1024, n_slots=2, n_threads=1)
    )
    await engine.start()
    yield ResponseCache(engine, shared_redis, ttl_s=60)
    await engine.close()


def ask(user: str, text: str, **sampling: object) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r-{uuid.uuid4().hex}",
        user_id=user,
        messages=[ChatMessage("user", text)],
        sampling=SamplingParams(max_tokens=8, **sampling),  # type: ignore[arg-type]
    )


async def run(engine: ResponseCache, request: GenerationRequest) -> tuple[str, Finished]:
    parts, finished = [], None
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            finished = event
    assert finished is not None
    return "".join(parts), finished


def engine_prompts(engine: ResponseCache) -> int:
    return engine.stats().prompt_tokens


def lookups(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "companion:response_cache_lookups_total", {"model_name": "tiny", "result": result}
    )
    return value or 0.0


async def test_a_repeated_greedy_request_is_answered_from_the_cache(
    cached: ResponseCache,
) -> None:
    user, text = f"u-{uuid.uuid4().hex}", f"Hello {uuid.uuid4().hex}"
    hits = lookups("hit")
    first_text, first = await run(cached, ask(user, text, temperature=0))
    computed = engine_prompts(cached)
    again_text, again = await run(cached, ask(user, text, temperature=0))
    assert again_text == first_text
    assert engine_prompts(cached) == computed  # the engine did not see the second request
    assert again.usage.completion_tokens == first.usage.completion_tokens
    assert (
        again.usage.cached_prompt_tokens == again.usage.prompt_tokens == first.usage.prompt_tokens
    )
    assert lookups("hit") == hits + 1


async def test_never_across_users_and_never_for_sampled_requests(
    cached: ResponseCache, shared_redis: Redis
) -> None:
    text = f"Hi {uuid.uuid4().hex}"
    await run(cached, ask("alice", text, temperature=0))
    before = engine_prompts(cached)
    await run(cached, ask("bob", text, temperature=0))
    assert engine_prompts(cached) > before  # bob's identical request was computed

    sampled = ask("alice", text, temperature=0.8)
    await run(cached, sampled)
    assert await shared_redis.get(cache_key("tiny", sampled)) is None
    seeded = ask("alice", text, temperature=0.8, seed=7)
    await run(cached, seeded)
    assert await shared_redis.get(cache_key("tiny", seeded)) is not None


async def test_an_abandoned_generation_is_not_stored(
    cached: ResponseCache, shared_redis: Redis
) -> None:
    request = ask("carol", f"Tell me {uuid.uuid4().hex}", temperature=0)
    events = cached.generate(request)
    assert isinstance(await anext(events), TextDelta)
    await events.aclose()
    assert await shared_redis.get(cache_key("tiny", request)) is None
