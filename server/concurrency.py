"""Generation requests while they run: at most N per user, and a client that leaves ends its.

Two things one user could otherwise do to everyone else (issue 16, finding 8):

- **Open many generations at once.** Rate limits count requests per minute, not how
  many run together: sixty long streams opened in one second pass a 60/minute limit
  and take every slot of the engine. So each user may have
  ``COMPANION_MAX_CONCURRENT_PER_USER`` generation requests (chat turns, panels,
  ``/v1`` completions) in progress; past that, a 429 with ``Retry-After`` before
  anything is stored. The count is shared by every instance: a lease per request in
  a Redis sorted set per user (member: the lease id, score: when it lapses). Taking
  one is one Lua script (drop lapsed leases, count, add), so two instances never both
  take the last one. A running request renews its lease every `RENEW_S`; an instance
  that dies stops renewing, and its leases lapse after `LEASE_S` instead of holding
  the user's slots for good. No library we use does leases (``limits`` counts hits
  in a window; redis-py's lock is for one holder), hence this module.
- **Leave a non-streamed request generating.** A streamed response notices the
  client going (the ASGI server says so while it sends); a JSON response is computed
  first and sent at the end, and nothing told it. `GenerationGuard` reads the
  connection's ``receive`` while the handler computes, and when the client
  disconnects before the response has started, it cancels the handler: the engine
  aborts the request (closing the stream aborts it) and frees its slot.

The keys-off local caller is not capped: keys off means loopback only, one person's
machine, and the owner's own tools (a benchmark with eight conversations) would hit
the cap. When Redis cannot be reached the cap is not enforced (logged), as with the
rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

LEASE_S = 30.0
RENEW_S = 10.0
_STATE_KEY = "companion.leases"

# KEYS[1]: the user's leases; ARGV: lease id, cap, lease milliseconds
_TAKE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
# KEYS[1]: the user's leases; ARGV: lease id, lease milliseconds
_RENEW = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now_ms + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


class TooManyInProgress(HTTPException):
    """429: the user already has their cap of generation requests running."""

    status_code = 429

    def __init__(self, cap: int) -> None:
        super().__init__(
            detail=f"{cap} requests of this user are already in progress; wait for one to end",
            headers={"Retry-After": "1"},
        )


@dataclass(frozen=True, slots=True)
class _Lease:
    key: str
    lease_id: str


class UserLeases:
    """Takes and gives back per-user leases in Redis (see the module doc)."""

    def __init__(self, redis: Redis, cap: int, *, prefix: str = "companion:inflight") -> None:
        self._redis = redis
        self.cap = cap
        self._prefix = prefix
        self._take = redis.register_script(_TAKE)
        self._renew = redis.register_script(_RENEW)

    def key(self, user_id: str) -> str:
        return f"{self._prefix}:{user_id}"

    async def take(self, user_id: str) -> _Lease | None:
        """A lease for one more request; `TooManyInProgress` at the cap; None when Redis
        cannot be reached (not enforced)."""
        lease = _Lease(self.key(user_id), uuid.uuid4().hex)
        try:
            args: list[str | int] = [lease.lease_id, self.cap, _ms(LEASE_S)]
            taken = await self._take(keys=[lease.key], args=args)
        except RedisError as exc:
            log.warning("concurrency cap not checked: redis unavailable", extra={"error": str(exc)})
            return None
        if not taken:
            raise TooManyInProgress(self.cap)
        return lease

    async def renew(self, lease: _Lease) -> None:
        with contextlib.suppress(RedisError):
            await self._renew(keys=[lease.key], args=[lease.lease_id, _ms(LEASE_S)])

    async def give_back(self, lease: _Lease) -> None:
        try:
            await self._redis.zrem(lease.key, lease.lease_id)
        except RedisError as exc:  # it lapses by itself
            log.warning("lease not given back", extra={"error": str(exc)})


@dataclass
class _Held:
    """The leases one request took (a dependency takes them, the guard gives them back)."""

    leases: UserLeases | None = None
    taken: list[_Lease] = field(default_factory=list)


async def hold_slot(connection: ASGIConnection[Any, Any, Any, Any], user_id: str) -> None:
    """Take ``user_id``'s lease for this request, if it is a guarded generation request
    and the app caps users (called by the auth dependencies once the user is known)."""
    held: _Held | None = connection.scope.get(_STATE_KEY)  # type: ignore[assignment]
    if held is None or held.leases is None or held.taken:
        return
    lease = await held.leases.take(user_id)
    if lease is not None:
        held.taken.append(lease)


class GenerationGuard:
    """ASGI middleware of the generation routes (``middleware=[GenerationGuard]``):
    leases given back when the request ends, and the handler cancelled when its
    client disconnects before the response starts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        resources = scope["app"].state.get("resources")
        held = _Held(getattr(resources, "user_leases", None))
        scope[_STATE_KEY] = held  # type: ignore[literal-required]
        try:
            await self._run(scope, receive, send)
        finally:
            leases = held.leases
            for lease in held.taken:
                assert leases is not None
                await leases.give_back(lease)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        inbox: asyncio.Queue[ReceiveMessage] = asyncio.Queue()
        started = asyncio.Event()

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, inbox.get, sending))
        reader = asyncio.create_task(_relay(receive, inbox))
        renewer = asyncio.create_task(self._renew(scope))
        try:
            while not handler.done():
                await asyncio.wait({handler, reader}, return_when=asyncio.FIRST_COMPLETED)
                if reader.done() and not handler.done():
                    if not started.is_set():  # nothing sent yet, and no one to send it to
                        handler.cancel()
                    await asyncio.wait({handler})
            await handler
        except asyncio.CancelledError:
            if not handler.cancelled():
                raise
        finally:
            for task in (reader, renewer, handler):
                task.cancel()
            await asyncio.gather(reader, renewer, handler, return_exceptions=True)

    async def _renew(self, scope: Scope) -> None:
        held: _Held = scope[_STATE_KEY]  # type: ignore[literal-required]
        while True:
            await asyncio.sleep(RENEW_S)
            if held.leases is not None:
                for lease in held.taken:
                    await held.leases.renew(lease)


async def _relay(receive: Receive, inbox: asyncio.Queue[ReceiveMessage]) -> None:
    """Pass the client's messages on; return once it disconnected."""
    while True:
        message = await receive()
        inbox.put_nowait(message)
        if message["type"] == "http.disconnect":
            return


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
