"""Per-conversation session state in Redis, shared by every instance, updated atomically.

One Redis hash per conversation, ``companion:session:{<conversation id>}``, with
a TTL (24 h by default) refreshed whenever the session is read or written. Each
field holds the JSON encoding of one `SessionState` field, so a field can be
read or incremented on its own (``HINCRBY`` on ``"3"`` works) and a state
written by an older or newer version still decodes (unknown fields are
ignored, missing ones take their defaults). The braces are a Redis Cluster hash
tag: every key of one conversation lands in one slot.

Atomicity, two ways:

- Fixed operations (`get`, `get_or_create`, `increment`) are Lua scripts,
  registered once per store with ``register_script`` (sent by SHA, loaded again
  by redis-py if the server lost it). A script runs alone on the server, so a
  counter bumped by any number of instances never loses a step, in one round
  trip and with no retries.
- `update` applies an arbitrary Python function, which cannot run inside Redis;
  it uses optimistic concurrency instead: WATCH the key, read, apply, write in
  MULTI/EXEC. If another instance wrote the key in between, EXEC fails and we
  read again, after a jittered, growing pause so that contenders spread out.
  After ``max_retries`` lost races `SessionConflictError` is raised rather than
  spinning forever. Sessions are rarely contended (one chat turn at a time per
  conversation), so the retry is the exception, not the rule.

A conversation belongs to one user: every operation takes the caller's user id
and refuses (`memory.errors.ConversationOwnerError`) a session recorded for
another. Redis being unreachable raises `SessionUnavailableError`.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError, WatchError
from redis.typing import EncodableT

from memory.errors import ConversationOwnerError, SessionConflictError, SessionUnavailableError

CounterField = Literal["explicit_attempts", "route_lock_remaining", "crisis_remaining"]


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Session lifetime and how hard `SessionStore.update` retries under contention."""

    ttl_s: int = 86400
    max_retries: int = 64
    retry_base_s: float = 0.002
    retry_cap_s: float = 0.05


class RouteCounters(msgspec.Struct, frozen=True):
    """The routing fields of a session (`server.routing` reads and writes them)."""

    route: str | None = None
    route_lock_remaining: int = 0
    explicit_attempts: int = 0
    last_content_label: str | None = None
    crisis_remaining: int = 0


class SessionState(msgspec.Struct, frozen=True):
    """What the chat turn needs to remember about a conversation between messages."""

    conversation_id: uuid.UUID
    user_id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    age_verified: bool = False
    age_verified_at: datetime | None = None
    route: str | None = None
    route_lock_remaining: int = 0
    explicit_attempts: int = 0  # explicit requests made without age verification
    last_content_label: str | None = None
    crisis_remaining: int = 0  # messages the crisis route still holds after self-harm
    # the routing fields before the last message was routed: a regeneration or an edit
    # routes that message again from here, so asking again spends no window or lock
    before_last: RouteCounters | None = None

    def route_counters(self) -> RouteCounters:
        """The routing fields as they are now."""
        return RouteCounters(
            self.route,
            self.route_lock_remaining,
            self.explicit_attempts,
            self.last_content_label,
            self.crisis_remaining,
        )

    def with_counters(self, counters: RouteCounters) -> SessionState:
        """This state with ``counters`` as its routing fields."""
        return msgspec.structs.replace(self, **msgspec.structs.asdict(counters))


_MISMATCH = 0  # what the scripts return when the session is another user's

# KEYS[1] session. ARGV[1] caller's user id (JSON), ARGV[2] ttl. Missing: nil.
_READ = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] session. ARGV: user id (JSON), ttl, counter field ('' for none), step,
# updated_at (JSON), then field/value pairs of a fresh state, written if missing.
_TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 6))
end
if redis.call('HGET', KEYS[1], 'user_id') ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[4])
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[5])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""


def session_key(conversation_id: uuid.UUID) -> str:
    """The Redis key of a conversation's session."""
    return f"companion:session:{{{conversation_id}}}"


class SessionStore:
    """Session state of every conversation, safe to use from any number of instances."""

    def __init__(self, redis: Redis, config: SessionConfig | None = None) -> None:
        self._redis = redis
        self._config = config or SessionConfig()
        self._read = redis.register_script(_READ)
        self._touch = redis.register_script(_TOUCH)

    async def get(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> SessionState | None:
        """The session (TTL refreshed), or None when there is none (new, or expired)."""
        key = session_key(conversation_id)
        async with _unavailable_on_redis_error():
            reply = await self._read(keys=[key], args=[_json(user_id), self._config.ttl_s])
        return None if reply is None else _owned(reply, conversation_id)

    async def get_or_create(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> SessionState:
        """The session, created with defaults when missing; TTL refreshed either way."""
        return await self._run_touch(conversation_id, user_id, "", 0)

    async def increment(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, counter: CounterField, step: int = 1
    ) -> SessionState:
        """Add ``step`` (may be negative) to a counter in one atomic step; return the new state.

        Creates the session when missing, like `get_or_create`.
        """
        return await self._run_touch(conversation_id, user_id, counter, step)

    async def increment_attempts(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID
    ) -> SessionState:
        """Count one more explicit request made without age verification."""
        return await self.increment(conversation_id, user_id, "explicit_attempts")

    async def update(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        fn: Callable[[SessionState], SessionState],
    ) -> SessionState:
        """Apply ``fn`` to the current state (fresh when missing) atomically; return the result.

        ``fn`` must be a pure, synchronous function: it may run several times
        when other instances update the same session meanwhile. Identity and
        timestamps are kept by the store: ``fn`` cannot move a session to
        another conversation or user. Raises `SessionConflictError` after
        ``max_retries`` lost races.
        """
        key = session_key(conversation_id)
        for attempt in range(self._config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self._backoff(attempt))
            async with _unavailable_on_redis_error():
                state = await self._try_update(key, conversation_id, user_id, fn)
            if state is not None:
                return state
        raise SessionConflictError(
            f"session of conversation {conversation_id} still contended after "
            f"{self._config.max_retries} retries"
        )

    async def delete(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Forget the session (e.g. the conversation was deleted)."""
        if await self.get(conversation_id, user_id) is not None:
            async with _unavailable_on_redis_error():
                await self._redis.delete(session_key(conversation_id))

    async def _try_update(
        self,
        key: str,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        fn: Callable[[SessionState], SessionState],
    ) -> SessionState | None:
        """One optimistic round; None when another writer got in first."""
        async with self._redis.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.hgetall(key)
            current = _decode(raw, conversation_id) if raw else _fresh(conversation_id, user_id)
            if current.user_id != user_id:
                raise ConversationOwnerError(
                    f"conversation {conversation_id} belongs to another user"
                )
            new = _keep_identity(fn(current), current)
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.hset(key, mapping=_to_hash(new))
            pipe.expire(key, self._config.ttl_s)
            try:
                await pipe.execute()
            except WatchError:
                return None
        return new

    async def _run_touch(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, counter: str, step: int
    ) -> SessionState:
        fresh = _fresh(conversation_id, user_id)
        pairs = [item for field in _to_hash(fresh).items() for item in field]
        args: list[EncodableT] = [
            _json(user_id),
            self._config.ttl_s,
            counter,
            step,
            _json(fresh.updated_at),
        ]
        async with _unavailable_on_redis_error():
            reply = await self._touch(keys=[session_key(conversation_id)], args=args + pairs)
        return _owned(reply, conversation_id)

    def _backoff(self, attempt: int) -> float:
        # Full jitter: contenders that collided once pick different pauses.
        ceiling = min(self._config.retry_cap_s, self._config.retry_base_s * 2**attempt)
        return random.uniform(0, ceiling)  # noqa: S311 - spreading retries, not a secret


@asynccontextmanager
async def _unavailable_on_redis_error() -> AsyncIterator[None]:
    try:
        yield
    except WatchError:
        raise
    except RedisError as exc:
        raise SessionUnavailableError(f"session store unavailable: {type(exc).__name__}") from exc


def _fresh(conversation_id: uuid.UUID, user_id: uuid.UUID) -> SessionState:
    now = datetime.now(UTC)
    return SessionState(conversation_id, user_id, created_at=now, updated_at=now)


def _keep_identity(new: SessionState, current: SessionState) -> SessionState:
    return msgspec.structs.replace(
        new,
        conversation_id=current.conversation_id,
        user_id=current.user_id,
        created_at=current.created_at,
        updated_at=datetime.now(UTC),
    )


def _owned(reply: Any, conversation_id: uuid.UUID) -> SessionState:
    if reply == _MISMATCH:
        raise ConversationOwnerError(f"conversation {conversation_id} belongs to another user")
    flat: list[bytes] = reply
    return _decode(dict(zip(flat[::2], flat[1::2], strict=True)), conversation_id)


def _json(value: object) -> bytes:
    return msgspec.json.encode(value)


def _to_hash(state: SessionState) -> dict[EncodableT, EncodableT]:
    return {name: _json(getattr(state, name)) for name in state.__struct_fields__}


def _decode(raw: Mapping[bytes | str, bytes | str], conversation_id: uuid.UUID) -> SessionState:
    try:
        fields = {_text(name): msgspec.json.decode(value) for name, value in raw.items()}
        return msgspec.convert(fields, SessionState)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise SessionUnavailableError(
            f"session of conversation {conversation_id} does not decode: {exc}"
        ) from exc


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else name
