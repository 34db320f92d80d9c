"""A response cache in Redis for deterministic requests, wrapped around any engine.

Only a request whose output is fixed by its inputs is cached: temperature 0
(greedy) or a fixed seed. The key is a SHA-256 of everything that decides the
output (the user, the model, the messages or prompt, every sampling
parameter, the JSON schema or grammar), so:

- a hit replays the stored text as one delta and a `Finished` whose usage
  counts the whole prompt as cached; the engine is not called at all;
- the user id is part of the key, so one user's cached reply never answers
  another user, for companion turns and /v1 alike (a privacy-first service
  keeps even identical prompts apart); it is in the key's name too
  (``companion:rc:<user>:<digest>``), so erasing the user finds their entries;
- only complete generations (finish reason ``stop`` or ``length``) are
  stored; an aborted or failed one never is;
- Redis trouble never fails a request: the cache is skipped (and counted).

Wrapping the `Engine` protocol puts the cache in one place for the OpenAI
API, the chat turn and the background jobs. Being the one place every request
passes, it also counts the background requests (memory jobs) in flight, so the
web UI's status can say how much of the engine's load is not the user's turn.

ARCHITECTURE: the cache is an inference layer, composed around every engine
the model manager opens (`inference.opener`); the server only configures it.
It takes its Redis client as a parameter (inference never opens one itself).
Its lookups go to a `CacheObserver`; `ResponseCacheMetrics` is the one that
publishes them to Prometheus (``companion:response_cache_lookups``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import AsyncGenerator
from dataclasses import asdict
from typing import Literal, Protocol

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from inference.engine import Engine
from inference.stats import EngineStats
from inference.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    Priority,
    PromptSize,
    StreamEvent,
    TextDelta,
    Timings,
    Usage,
)

_STORED: tuple[FinishReason, ...] = ("stop", "length")

log = logging.getLogger(__name__)

_KEY_PREFIX = "companion:rc:"

Lookup = Literal["hit", "miss", "error"]


class CacheObserver(Protocol):
    """Told about every lookup the cache makes."""

    def lookup(self, model_id: str, result: Lookup) -> None: ...


class ResponseCacheMetrics:
    """``companion:response_cache_lookups{model_name, result}``: the `CacheObserver`
    that publishes lookups to Prometheus."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        self.lookups = Counter(
            f"{prefix}:response_cache_lookups",
            "Response-cache lookups of deterministic requests, by model and result"
            " (hit, miss, error)",
            ["model_name", "result"],
            registry=registry,
        )

    def lookup(self, model_id: str, result: Lookup) -> None:
        self.lookups.labels(model_id, result).inc()


@functools.cache
def default_response_cache_metrics() -> ResponseCacheMetrics:
    """The process's response-cache metrics (created once: names are global)."""
    return ResponseCacheMetrics()


class _Entry(msgspec.Struct):
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def is_deterministic(request: GenerationRequest) -> bool:
    return request.sampling.temperature == 0 or request.sampling.seed is not None


def cache_key(model_id: str, request: GenerationRequest) -> str:
    """The key of ``request``'s reply: the user and everything that decides the output."""
    decided_by = {
        "user": request.user_id,
        "model": model_id,
        "messages": [[m.role, m.content] for m in request.messages],
        "prompt": request.prompt,
        "prompt_tokens": list(request.prompt_tokens),
        "sampling": asdict(request.sampling),
        "json_schema": request.json_schema,
        "grammar": request.grammar,
    }
    digest = hashlib.sha256(msgspec.json.encode(decided_by, order="sorted")).hexdigest()
    return f"{_KEY_PREFIX}{request.user_id}:{digest}"


class ResponseCache:
    """An `Engine` that answers repeated deterministic requests from Redis."""

    def __init__(
        self, engine: Engine, redis: Redis, ttl_s: int, observer: CacheObserver | None = None
    ) -> None:
        self.engine = engine
        self._redis = redis
        self._ttl_s = ttl_s
        self._observer = observer or default_response_cache_metrics()
        self.background = 0  # background requests (memory jobs) in flight, waiting or running

    @property
    def model_id(self) -> str:
        return self.engine.model_id

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        await self.engine.close()

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    async def measure(self, request: GenerationRequest) -> PromptSize | None:
        return await self.engine.measure(request)

    async def forget(self, user_id: str) -> None:
        await self.engine.forget(user_id)  # the entries are Redis keys: erased with the user

    def stats(self) -> EngineStats:
        return self.engine.stats()

    async def health(self) -> None:
        await self.engine.health()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        background = request.priority == Priority.BACKGROUND
        self.background += background
        try:
            async for event in self._generate(request):
                yield event
        finally:
            self.background -= background

    async def _generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        if self._ttl_s <= 0 or not is_deterministic(request):  # TTL 0: caching is off
            async for event in self.engine.generate(request):
                yield event
            return
        key = cache_key(self.model_id, request)
        entry = await self._lookup(key)
        if entry is not None:
            yield TextDelta(entry.text)
            usage = Usage(entry.prompt_tokens, entry.prompt_tokens, entry.completion_tokens)
            yield Finished(entry.finish_reason, usage, Timings(0.0, 0.0, 0.0))
            return
        parts: list[str] = []
        async for event in self.engine.generate(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif event.finish_reason in _STORED:
                await self._store(key, "".join(parts), event)
            yield event

    async def _lookup(self, key: str) -> _Entry | None:
        try:
            raw = await self._redis.get(key)
        except RedisError as exc:
            self._observer.lookup(self.model_id, "error")
            log.warning("response cache skipped", extra={"error": str(exc)})
            return None
        self._observer.lookup(self.model_id, "miss" if raw is None else "hit")
        return None if raw is None else msgspec.json.decode(raw, type=_Entry)

    async def _store(self, key: str, text: str, finished: Finished) -> None:
        entry = _Entry(
            text,
            finished.finish_reason,
            finished.usage.prompt_tokens,
            finished.usage.completion_tokens,
        )
        try:
            await self._redis.set(key, msgspec.json.encode(entry), ex=self._ttl_s)
        except RedisError as exc:
            log.warning("response not cached", extra={"error": str(exc)})
