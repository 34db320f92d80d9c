"""Where `memory` meets `inference` for background jobs.

`EngineJSONGenerator` is the engine as a `memory.protocols.JSONGenerator`
(`memory` never imports `inference`; `server` may import both).
`start_memory_jobs` opens the job queue for the chat turn and, unless jobs run
in separate `companion worker` processes, a worker in this process; either
way it samples the queue's depth and oldest job into metrics every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import asyncpg
from saq import Queue

from inference.embedder import mark_background
from inference.engine import Engine
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    Priority,
    Role,
    SamplingParams,
    TextDelta,
)
from memory.consolidation import Consolidator
from memory.extraction import Extractor
from memory.jobs import JobsConfig, MemoryJobDeps, create_queue, make_worker, read_queue
from memory.longterm import LongTermMemory
from memory.metrics import default_memory_metrics
from memory.profile import ProfileStore
from memory.profile_update import ProfileUpdater
from memory.protocols import Embedder, PromptMessage
from memory.summaries import Summariser, SummaryConfig

log = logging.getLogger(__name__)

_ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


class TruncatedOutput(Exception):
    """The model hit ``max_tokens`` before closing its JSON document."""


class EngineJSONGenerator:
    """Schema-constrained, greedy generation at background priority on an `Engine`."""

    def __init__(self, engine: Engine, max_tokens: int = 512, deadline_s: float = 120.0) -> None:
        self._engine = engine
        self._max_tokens = max_tokens
        self._deadline_s = deadline_s

    async def generate_json(
        self, prompt_messages: Sequence[PromptMessage], schema: Mapping[str, Any], user_id: str
    ) -> str:
        """The generated text; engine errors propagate, truncation is `TruncatedOutput`."""
        request = GenerationRequest(
            request_id=f"memory-{uuid.uuid4().hex}",
            user_id=user_id,
            messages=[ChatMessage(_ROLES.get(m.role, "user"), m.content) for m in prompt_messages],
            sampling=SamplingParams(temperature=0.0, max_tokens=self._max_tokens),
            json_schema=dict(schema),
            priority=Priority.BACKGROUND,
            deadline_s=self._deadline_s,
        )
        parts: list[str] = []
        async for event in self._engine.generate(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished) and event.finish_reason != "stop":
                raise TruncatedOutput(f"generation ended with {event.finish_reason!r}")
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class MemoryJobs:
    """Where the chat turn queues memory work."""

    queue: Queue
    config: JobsConfig


async def start_memory_jobs(
    stack: AsyncExitStack,
    redis_url: str,
    pool: asyncpg.Pool,
    engine: Engine,
    embedder: Embedder,
    *,
    run_worker: bool,
    extract_every: int,
    concurrency: int,
    sample_every_s: float = 5.0,
    buffer_size: int = 40,
) -> MemoryJobs:
    """Open the job queue; with ``run_worker``, also process jobs in this process."""
    config = JobsConfig(extract_every_n_turns=extract_every, concurrency=concurrency)
    queue = create_queue(redis_url)
    await queue.connect()
    stack.push_async_callback(queue.disconnect)
    sampler = asyncio.create_task(_sample_queue(queue, sample_every_s), name="queue-metrics")
    stack.push_async_callback(_cancel, sampler)
    if run_worker:
        generator = EngineJSONGenerator(engine)
        store = LongTermMemory(pool, embedder)
        stack.push_async_callback(store.close)  # its batched access statistics, after the worker
        deps = MemoryJobDeps(
            pool,
            Extractor(pool, store, embedder, generator),
            Consolidator(pool, store, generator),
            config,
            ProfileUpdater(ProfileStore(pool), embedder, generator),
            Summariser(pool, generator, SummaryConfig(buffer_size=buffer_size)),
        )
        worker = make_worker(queue, deps)
        # The process that embeds the worker owns its signals (uvicorn, or `companion
        # worker`); saq would install its own, which only works on the main thread.
        worker.SIGNALS = []
        # Every task the worker starts inherits this context: its embeddings wait for
        # the requests' (a turn's classification never queues behind new memories).
        background = contextvars.copy_context()
        background.run(mark_background)
        task = asyncio.create_task(worker.start(), name="memory-worker", context=background)

        async def stop() -> None:
            await worker.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        stack.push_async_callback(stop)
    return MemoryJobs(queue, config)


async def _sample_queue(queue: Queue, every_s: float) -> None:
    """Publish the queue's depth and oldest job; a Redis outage skips samples, never stops."""
    metrics = default_memory_metrics()
    while True:
        try:
            metrics.update_queue(await read_queue(queue))
        except Exception as exc:  # readiness reports Redis; the next sample tries again
            log.debug("queue sample failed: %s: %s", type(exc).__name__, exc)
        await asyncio.sleep(every_s)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
