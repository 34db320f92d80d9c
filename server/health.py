"""Liveness and readiness.

``/health/live`` says the process answers. ``/health/ready`` asks every
component (database, Redis, and later the inference engine) concurrently,
each within a time limit, and answers 503 while any of them is down, 200 when
all are up again. The body names each component with its status and latency;
an error is reported by its type only (details go to the log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import msgspec
from litestar import Controller, Response, get
from litestar.datastructures import State

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Probe:
    """One component's check: ``check`` returns when the component works and raises otherwise."""

    name: str
    check: Callable[[], Awaitable[object]]


class ComponentHealth(msgspec.Struct, omit_defaults=True):
    status: str
    latency_ms: float
    error: str | None = None


class Readiness(msgspec.Struct):
    status: str
    components: dict[str, ComponentHealth]


async def check_readiness(probes: Sequence[Probe], timeout_s: float = PROBE_TIMEOUT_S) -> Readiness:
    """Run every probe concurrently and collect the verdicts."""
    results = await asyncio.gather(*(_run_probe(p, timeout_s) for p in probes))
    components = {probe.name: result for probe, result in zip(probes, results, strict=True)}
    ready = all(c.status == "up" for c in components.values())
    return Readiness(status="ready" if ready else "unavailable", components=components)


async def _run_probe(probe: Probe, timeout_s: float) -> ComponentHealth:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(probe.check(), timeout_s)
    except Exception as exc:
        latency = round((time.perf_counter() - started) * 1000, 2)
        reason = "Timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
        log.warning("component down", extra={"component": probe.name, "error": repr(exc)})
        return ComponentHealth(status="down", latency_ms=latency, error=reason)
    return ComponentHealth(status="up", latency_ms=round((time.perf_counter() - started) * 1000, 2))


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get("/live", cache=False)
    async def live(self) -> dict[str, str]:
        return {"status": "ok"}

    @get("/ready", cache=False)
    async def ready(self, state: State) -> Response[Readiness]:
        readiness = await check_readiness(state.resources.probes)
        return Response(readiness, status_code=200 if readiness.status == "ready" else 503)
