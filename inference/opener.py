"""How the model manager opens an engine: built, started, observed and cached.

`EngineLauncher` is the `EngineOpener` a `ModelManager` is given. For each
model it loads, it creates the engine (`inference.factory`), starts it, runs
a task that publishes the engine's stats as metrics every second, and serves
it behind the response cache (`inference.response_cache`), so every request
to a managed model (the companion turn, /v1, the memory jobs) passes the
cache. Closing stops the task, closes the engine and sets its gauges to zero.

ARCHITECTURE: this is the one way an engine is opened in the service. The
server passes only configuration (the Redis client the cache keeps its entries
in, and their TTL); what wraps an engine lives here, in inference, so a /v1
call never goes inference -> server -> inference.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.factory import create_engine
from inference.manager import OpenedEngine
from inference.metrics import EngineMetrics, default_engine_metrics
from inference.response_cache import ResponseCache
from inference.stats import EngineStats


@dataclass(frozen=True, slots=True)
class EngineLauncher:
    """Opens engines behind a response cache in ``redis`` with entries kept ``cache_ttl_s``
    (0: the cache counts lookups and stores nothing)."""

    redis: Redis
    cache_ttl_s: int
    stats_every_s: float = 1.0

    async def __call__(self, config: ChatEngineConfig) -> OpenedEngine:
        """Open ``config``'s engine (`open_engine`): what `ModelManager` calls to load."""
        return await open_engine(config, self.redis, self.cache_ttl_s, self.stats_every_s)


async def open_engine(
    config: ChatEngineConfig, redis: Redis, cache_ttl_s: int, stats_every_s: float = 1.0
) -> OpenedEngine:
    """Start the engine for ``config``, with its metrics task and the response cache."""
    metrics = default_engine_metrics()
    engine = create_engine(config, observer=metrics)
    if engine is None:
        raise EngineUnavailable(f"no engine for {config.model_id}")
    await engine.start()
    task = asyncio.create_task(
        _publish_stats(engine, metrics, stats_every_s), name="engine-metrics"
    )

    async def close() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await engine.close()
        metrics.update(_idle(engine.model_id))  # gauges to zero; counters restart at a reload

    return OpenedEngine(ResponseCache(engine, redis, cache_ttl_s), close)


async def _publish_stats(engine: Engine, metrics: EngineMetrics, every_s: float) -> None:
    while True:
        metrics.update(engine.stats())
        await asyncio.sleep(every_s)


def _idle(model_id: str) -> EngineStats:
    return EngineStats(model_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
