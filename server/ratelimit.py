"""Rate limits shared by every instance: a moving window per user and per IP, in Redis.

The counting is the `limits` library's moving-window limiter (a Lua script
per hit, so two instances counting the same user never lose a hit) on the
app's own Redis connection pool. We add only what it does not know: which
limit applies to which request.

- Every rate-limited route names a *group* in its handler ``opt``
  (``opt={"rate_limit": "turn"}``). A group's limit is configured in
  ``COMPANION_RATE_LIMIT_ROUTES`` (``turn=30/minute,auth=10/minute``); a route
  without its own entry counts against the user default
  (``COMPANION_RATE_LIMIT_USER``).
- The per-IP limit (``COMPANION_RATE_LIMIT_IP``) is checked first, before
  authentication, so guessing keys or passwords is throttled too. Routes
  that identify a user then count against that user's limit for the group.
  The ``auth`` group (register, login) has no user, so its limit applies to
  the IP.
- A rejected request changes nothing and gets 429 with ``Retry-After``: the
  whole seconds until the oldest hit in the window expires.
- When Redis is unreachable the limit is not enforced (logged, counted),
  rather than turning every request into an error: the session layer fails
  those requests anyway, and health reports Redis down.

Both outcomes are counted through `RateLimitMetrics` (the limiter is given
one; by default the process's, in the default registry), the way the engines
publish theirs (`inference.metrics`): no metric is a module-level global.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.settings import RateLimit

log = logging.getLogger(__name__)
Connection = ASGIConnection[Any, Any, Any, Any]

IP_ONLY_GROUPS = frozenset({"auth"})


class RateLimitMetrics:
    """``companion:rate_limit_rejections{scope, group}`` and ``companion:rate_limit_unchecked``."""

    def __init__(self, registry: CollectorRegistry = REGISTRY, prefix: str = "companion") -> None:
        self.rejected = Counter(
            f"{prefix}:rate_limit_rejections",
            "Requests refused with 429, by limit scope (user or ip) and route group",
            ["scope", "group"],
            registry=registry,
        )
        self.unchecked = Counter(
            f"{prefix}:rate_limit_unchecked",
            "Requests let through unchecked because Redis could not be reached",
            registry=registry,
        )


@functools.cache
def default_rate_limit_metrics() -> RateLimitMetrics:
    """The process's rate-limit metrics (created once: names are global)."""
    return RateLimitMetrics()


class RateLimited(HTTPException):
    """429 with ``Retry-After``; raised before the request changes anything."""

    status_code = 429

    def __init__(self, scope: str, retry_after_s: int) -> None:
        super().__init__(
            detail=f"too many requests for this {scope}; retry in {retry_after_s} s",
            headers={"Retry-After": str(retry_after_s)},
        )
        self.scope = scope
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Limits:
    user: RateLimit
    ip: RateLimit
    routes: Mapping[str, RateLimit]

    def for_group(self, group: str) -> RateLimit:
        return self.routes.get(group, self.ip if group in IP_ONLY_GROUPS else self.user)


class RateLimiter:
    """Checks and counts requests; one per process, on the app's Redis pool."""

    def __init__(
        self,
        redis: Redis,
        limits: Limits,
        *,
        key_prefix: str = "companion:rl",
        metrics: RateLimitMetrics | None = None,
    ) -> None:
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=key_prefix,
            connection_pool=redis.connection_pool,  # type: ignore[arg-type]  # typed too narrowly
            wrap_exceptions=False,
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self.limits = limits
        self._metrics = metrics or default_rate_limit_metrics()

    async def hit(self, scope: str, group: str, identity: str, limit: RateLimit) -> None:
        """Count one request of ``identity``; raise `RateLimited` when over ``limit``."""
        item = RateLimitItemPerSecond(limit.count, limit.period_s)
        try:
            if await self._limiter.hit(item, scope, group, identity):
                return
            stats = await self._limiter.get_window_stats(item, scope, group, identity)
        except RedisError as exc:
            self._metrics.unchecked.inc()
            log.warning("rate limit not checked: redis unavailable", extra={"error": str(exc)})
            return
        self._metrics.rejected.labels(scope, group).inc()
        raise RateLimited(scope, max(1, math.ceil(stats.reset_time - time.time())))

    async def check_ip(self, connection: Connection) -> None:
        group = route_group(connection)
        if group is None:
            return
        limit = self.limits.for_group(group) if group in IP_ONLY_GROUPS else self.limits.ip
        await self.hit("ip", group, client_ip(connection), limit)

    async def check_user(self, connection: Connection, user_id: str) -> None:
        group = route_group(connection)
        if group is None or group in IP_ONLY_GROUPS:
            return
        await self.hit("user", group, user_id, self.limits.for_group(group))


def route_group(connection: Connection) -> str | None:
    """The rate-limit group the matched route declares, or None for unlimited routes."""
    group = connection.route_handler.opt.get("rate_limit")
    return str(group) if group else None


def client_ip(connection: Connection) -> str:
    """The peer address (behind a proxy, uvicorn's --forwarded-allow-ips sets it)."""
    client = connection.client
    return client.host if client else "unknown"


async def enforce_ip(connection: Connection) -> None:
    """The per-IP check for the current request, where the app has a limiter."""
    limiter: RateLimiter | None = getattr(connection.app.state.resources, "rate_limiter", None)
    if limiter is not None:
        await limiter.check_ip(connection)


async def enforce_user(connection: Connection, user_id: str) -> None:
    limiter: RateLimiter | None = getattr(connection.app.state.resources, "rate_limiter", None)
    if limiter is not None:
        await limiter.check_user(connection, user_id)


async def ip_guard(connection: Connection, _: BaseRouteHandler) -> None:
    """A route guard for routes with no user (register, login): the per-IP limit only."""
    await enforce_ip(connection)
