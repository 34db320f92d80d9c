"""A short history of the service's own stats, kept in memory for the dashboard.

`StatsRecorder` snapshots the Prometheus registry every ``every_s`` seconds
into a ring buffer of ``keep`` snapshots (15 minutes by default) and answers
`report` with chart points. It reads the registry, not the engine: with
several workers the registry is the multiprocess one, so every worker's
recorder shows the whole service, whichever worker the dashboard reaches.
Each report ends with a live point from the newest sample to now, so what
happened since the last tick is already in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import msgspec
from prometheus_client import REGISTRY, CollectorRegistry, Metric, multiprocess

from server.dashboard.series import Point, Snapshot, points, take_snapshot

log = logging.getLogger(__name__)

Collect = Callable[[], Iterable[Metric]]


class Totals(msgspec.Struct, kw_only=True):
    """Counters since the metrics began (the start of the service)."""

    generated_tokens: float
    prompt_tokens: float
    finished_requests: float
    prefix_hit_tokens: float
    prefix_queried_tokens: float


class StatsReport(msgspec.Struct, kw_only=True):
    """What ``GET /api/v1/admin/stats`` answers."""

    interval_s: float
    window_s: float
    points: list[Point]
    totals: Totals


def collect_registry() -> Iterable[Metric]:
    """The families ``/metrics`` would expose: every worker's, in multiprocess mode."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return list(registry.collect())
    return list(REGISTRY.collect())


class StatsRecorder:
    """A ring buffer of registry snapshots, and the chart points made from them."""

    def __init__(
        self,
        collect: Collect = collect_registry,
        every_s: float = 2.0,
        keep: int = 450,
        window_s: float = 30.0,
    ) -> None:
        self.every_s = every_s
        self.window_s = window_s
        self._collect = collect
        self._history: deque[Snapshot] = deque(maxlen=keep)

    async def sample(self) -> Snapshot:
        """Take a snapshot now (collection runs off the event loop) without keeping it."""
        families = await asyncio.to_thread(self._collect)
        return take_snapshot(families, time.time(), time.monotonic())

    async def record(self) -> None:
        self._history.append(await self.sample())

    async def report(self, since: float | None = None) -> StatsReport:
        """The points after ``since`` (wall-clock seconds), the live one last."""
        live = await self.sample()
        history = [*self._history, live]
        chart = [p for p in points(history, self.window_s) if since is None or p.t > since]
        totals = Totals(
            generated_tokens=live.generated_tokens,
            prompt_tokens=live.prompt_tokens,
            finished_requests=live.finished_requests,
            prefix_hit_tokens=live.prefix_hit_tokens,
            prefix_queried_tokens=live.prefix_queried_tokens,
        )
        return StatsReport(
            interval_s=self.every_s, window_s=self.window_s, points=chart, totals=totals
        )

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StatsRecorder]:
        """Sample in the background while the context is open."""
        await self.record()

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.every_s)
                try:
                    await self.record()
                except Exception:  # a bad read skips one sample; the dashboard keeps going
                    log.exception("dashboard stats sample failed")

        task = asyncio.create_task(loop(), name="dashboard-stats")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
