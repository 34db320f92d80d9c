"""Everything the app opens at start-up and closes at shutdown, in one place.

Order at start: the embedded servers (only where no URL is configured), the
schema migrations, the PostgreSQL pool and the Redis client, then the chat
model manager with the pinned chat engines loaded (its model loads off the
event loop; the manager opens each engine with a task that publishes its stats
as metrics every second, behind the response cache: `inference.opener`; which
models there are is `server.models_setup`), then the embedding model, then (where there
are GPUs) a task sampling NVML every five seconds, then the memory job queue
(and, unless ``COMPANION_MEMORY_WORKER=off``, a worker in this process, asking the
model ``COMPANION_MEMORY_MODEL`` names) and
the chat turn service, whose content classifier asks the judge that
``COMPANION_CONTENT_JUDGE`` names about unsure messages. Shutdown closes them
in reverse order. A failure part-way closes what was opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg
from redis.asyncio import Redis

from inference.classifiers.content import ContentClassifier
from inference.classifiers.content_judge import EngineJudge
from inference.classifiers.emotion import EmotionClassifier
from inference.embedder import Runtime, SentenceEmbedder
from inference.engine import Engine
from inference.engine_choice import Choice, cached_choice
from inference.gpu import GpuMetrics, read_gpus
from inference.manager import ModelManager
from memory.accounts import AccountStore
from memory.buffer import BufferConfig, ConversationBuffer
from memory.conversation_log import ConversationLog
from memory.db import create_pool
from memory.embedded import EmbeddedPostgres, EmbeddedRedis
from memory.longterm import LongTermMemory
from memory.messages import MessageStore
from memory.migrate import migrate_url
from memory.profile import ProfileStore
from memory.redis_client import create_redis
from memory.session import SessionConfig, SessionStore
from server.concurrency import UserLeases
from server.health import Probe
from server.memory_jobs import MemoryJobs, start_memory_jobs
from server.models_setup import judge_model_id, memory_model_id, open_models, small_model
from server.personas import Persona, load_personas
from server.ratelimit import Limits, RateLimiter, default_rate_limit_metrics
from server.settings import Settings
from server.turn.orchestrator import ChatTurnService

log = logging.getLogger(__name__)


class _Service(Protocol):
    def start(self) -> str: ...
    def stop(self) -> None: ...


@dataclass
class Resources:
    """Open handles shared by the request handlers of one process."""

    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    engine: Engine | None = None
    embedder: SentenceEmbedder | None = None
    chat: ChatTurnService | None = None
    probes: list[Probe] = field(default_factory=list)
    personas: dict[str, Persona] = field(default_factory=dict)
    rate_limiter: RateLimiter | None = None
    models: ModelManager | None = None  # every chat model; `engine` is its default one
    user_leases: UserLeases | None = None  # the per-user cap on generations in progress
    engine_choice: Choice | None = None  # how COMPANION_CHAT_ENGINE=auto chose, when it did

    def sessions(self) -> SessionStore:
        """Session records with the configured TTL (cheap: nothing is sent to Redis)."""
        return SessionStore(self.redis, session_config(self.settings))


def session_config(settings: Settings) -> SessionConfig:
    return SessionConfig(ttl_s=settings.session_ttl_s)


def buffer_config(settings: Settings) -> BufferConfig:
    """The buffer lives as long as the session: both are a conversation's Redis state."""
    return BufferConfig(size=settings.buffer_size, ttl_s=settings.session_ttl_s)


@asynccontextmanager
async def open_resources(settings: Settings) -> AsyncIterator[Resources]:
    """Open every resource for ``settings``; close them all on exit."""
    async with AsyncExitStack() as stack:
        database_url = settings.database.url or await _start(
            stack, EmbeddedPostgres(settings.data_dir)
        )
        redis_url = settings.redis.url or await _start(stack, EmbeddedRedis(settings.data_dir))
        if settings.database.migrate_on_start:
            applied = await migrate_url(database_url)
            log.info("schema up to date", extra={"applied": [m.version for m in applied]})
        pool = await create_pool(settings.database, database_url)
        stack.push_async_callback(pool.close)
        redis = create_redis(settings.redis, redis_url)
        stack.push_async_callback(redis.aclose)
        probes = [Probe("database", lambda: pool.fetchval("SELECT 1")), Probe("redis", redis.ping)]
        models = await open_models(stack, settings, redis)
        engine = models.loaded_engine(settings.chat_engine.model_id) if models else None
        if engine is not None:
            probes.append(Probe("engine", engine.health))
        embedder = await _start_embedder(stack, settings)
        await _watch_gpus(stack)
        jobs = None
        if engine is not None and embedder is not None:
            jobs = await start_memory_jobs(
                stack,
                redis_url,
                pool,
                memory_engine(settings, models, engine),
                embedder,
                run_worker=settings.memory_worker == "inprocess",
                extract_every=settings.memory_extract_every,
                concurrency=settings.memory_job_concurrency,
                buffer_size=settings.buffer_size,
            )
        personas = load_personas(settings.data_dir)  # once: edits apply at the next start
        small = _small_engine(settings, models) if engine is not None else None
        judge = content_judge(settings, models, engine)
        chat = await _chat_service(
            stack, settings, pool, redis, engine, embedder, jobs, personas, small, judge
        )
        limiter = _limiter(settings, redis)
        cap = settings.max_concurrent_per_user
        leases = UserLeases(redis, cap) if cap else None
        _freeze_startup_objects()
        choice = (
            cached_choice(settings.chat_engine) if settings.chat_engine.backend == "auto" else None
        )
        yield Resources(
            settings,
            pool,
            redis,
            engine,
            embedder,
            chat,
            probes,
            personas,
            limiter,
            models,
            leases,
            choice,
        )


def _freeze_startup_objects() -> None:
    """Keep what startup loaded out of every later garbage collection.

    The models, their libraries and the app are about half a million objects
    that live as long as the process. Left tracked, each full collection walks
    them all: about 230 ms on the 2-core VM with nothing else running, during
    which the event loop and the decode thread's Python stall (it showed as a
    600 ms first-token outlier in scripts/bench_chat.py). Frozen, a full
    collection sees only objects made since. The freeze is process-wide and
    happens once everything is loaded.
    """
    gc.freeze()
    log.info("startup objects frozen", extra={"objects": gc.get_freeze_count()})


def _limiter(settings: Settings, redis: Redis) -> RateLimiter | None:
    # the metrics exist with limits off too: the dashboards query them (and read 0)
    metrics = default_rate_limit_metrics()
    if not settings.rate_limits:
        return None
    limits = Limits(settings.rate_limit_user, settings.rate_limit_ip, settings.rate_limit_routes)
    return RateLimiter(redis, limits, metrics=metrics)


async def _chat_service(
    stack: AsyncExitStack,
    settings: Settings,
    pool: asyncpg.Pool,
    redis: Redis,
    engine: Engine | None,
    embedder: SentenceEmbedder | None,
    jobs: MemoryJobs | None,
    personas: dict[str, Persona],
    small_engine: Engine | None = None,
    judge: EngineJudge | None = None,
) -> ChatTurnService | None:
    """The chat turn needs the engine and the embedder (classifiers, memory); else none."""
    if engine is None or embedder is None:
        return None
    # the content prototypes embed about a hundred seed sentences: off the event loop
    content = await asyncio.to_thread(ContentClassifier, embedder, judge=judge)
    memories = LongTermMemory(pool, embedder)
    stack.push_async_callback(memories.close)  # batched access statistics, before the pool
    return ChatTurnService(
        engine=engine,
        log=ConversationLog(MessageStore(pool), ConversationBuffer(redis, buffer_config(settings))),
        sessions=SessionStore(redis, session_config(settings)),
        memories=memories,
        emotions=EmotionClassifier(embedder),
        content=content,
        personas=personas,
        accounts=AccountStore(pool),
        jobs=jobs,
        profiles=ProfileStore(pool),
        small_engine=small_engine,
    )


async def _watch_gpus(stack: AsyncExitStack, every_s: float = 5.0) -> None:
    """Sample NVML in the background where there are GPUs; nothing at all where there are none."""
    if not await asyncio.to_thread(read_gpus):
        return
    metrics = _gpu_metrics()

    async def sample() -> None:
        while True:
            metrics.update(await asyncio.to_thread(read_gpus))
            await asyncio.sleep(every_s)

    task = asyncio.create_task(sample(), name="gpu-metrics")
    stack.push_async_callback(_cancel, task)


@functools.cache
def _gpu_metrics() -> GpuMetrics:
    return GpuMetrics()  # metric names are process-global: create once


async def _start_embedder(stack: AsyncExitStack, settings: Settings) -> SentenceEmbedder | None:
    if settings.embedder == "none":
        return None
    runtime: Runtime = "torch" if settings.embedder_runtime == "torch" else "onnx"
    embedder = SentenceEmbedder(threads=settings.embedder_threads, runtime=runtime)
    await embedder.warm_up()  # load now, not on the first request
    stack.callback(embedder.close)
    return embedder


def content_judge(
    settings: Settings, models: ModelManager | None, engine: Engine | None
) -> EngineJudge | None:
    """Layer 4 of the content classifier, on the engine ``COMPANION_CONTENT_JUDGE`` names:
    the default chat ``engine``, or the judge's own model (pinned, so loaded by now)."""
    if settings.content_judge == "off":
        return None
    own = judge_model_id(settings)
    judging = models.loaded_engine(own) if own is not None and models else engine
    if judging is None:
        return None
    return EngineJudge(judging, deadline_s=settings.content_judge_deadline_s)


def memory_engine(settings: Settings, models: ModelManager | None, engine: Engine) -> Engine:
    """The engine the memory jobs ask (``COMPANION_MEMORY_MODEL``): the default chat
    ``engine``, or the memory model's own (pinned, so loaded by now)."""
    own = memory_model_id(settings)
    found = models.loaded_engine(own) if own is not None and models else None
    return found if found is not None else engine


def _small_engine(settings: Settings, models: ModelManager | None) -> Engine | None:
    """The small model for short small talk (`server.complexity`), where one is configured."""
    small = small_model(settings)
    return models.loaded_engine(small.model_id) if small and models else None


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _start(stack: AsyncExitStack, service: _Service) -> str:
    """Start an embedded server off the event loop and register its stop."""
    url = await asyncio.to_thread(service.start)
    stack.push_async_callback(asyncio.to_thread, service.stop)
    return url
