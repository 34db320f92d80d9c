"""``Idempotency-Key`` for chat turns: a retried POST returns the same turn, not a second one.

A client that lost the response to ``POST /conversations/{id}/messages``
(a dropped connection, a timeout) sends the same request again with the
same ``Idempotency-Key`` header. The first request claims the key in Redis
(``SET NX``, shared by every instance); when its turn completes, the whole
turn (meta, reply, done) is stored under the key for
``COMPANION_IDEMPOTENCY_TTL`` seconds. Then:

- a retry after completion gets the stored turn (JSON, or SSE replayed as
  ``meta``, one ``token`` with the whole reply, ``done``), with the header
  ``Idempotent-Replayed: true``, and nothing runs or is stored again;
- a retry while the first is still running gets 409 (try again shortly);
- the same key with a different message gets 422: a key names one request;
- a turn that fails or is abandoned mid-stream releases its key, so the
  retry runs the turn afresh (the first attempt's user message is already
  stored, as for any disconnect, so the conversation then shows it twice;
  the client asked for a reply and never got one).

Keys are scoped by user, so two users choosing the same key never meet.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import msgspec
from litestar.exceptions import ClientException, ValidationException
from redis.asyncio import Redis

from inference.types import TextDelta
from server.turn.events import TurnDone, TurnEvent, TurnMeta

HEADER = "idempotency-key"
_VALID_KEY = re.compile(r"[\x21-\x7e]{1,255}")


class TurnReply(msgspec.Struct):
    reply: str
    meta: TurnMeta
    done: TurnDone


class _Record(msgspec.Struct):
    fingerprint: str
    reply: TurnReply | None = None  # None while the first request runs


class KeyInProgress(ClientException):
    status_code = 409


class KeyReused(ClientException):
    status_code = 422


TurnEvents = AsyncGenerator[TurnEvent, None]


@dataclass(frozen=True, slots=True)
class Claim:
    """This request owns the key: complete it with the turn, or release it."""

    store: IdempotencyStore
    redis_key: str
    fingerprint: str

    async def complete(self, reply: TurnReply) -> None:
        record = msgspec.json.encode(_Record(self.fingerprint, reply))
        await self.store.redis.set(self.redis_key, record, ex=self.store.ttl_s)

    async def release(self) -> None:
        await self.store.redis.delete(self.redis_key)


class IdempotencyStore:
    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def claim(
        self, user_id: uuid.UUID, key: str, conversation_id: uuid.UUID, text: str
    ) -> Claim | TurnReply:
        """Claim ``key`` for this request, or the stored turn of an earlier identical one.

        Raises `KeyInProgress` (409) or `KeyReused` (422) as described above.
        """
        if not _VALID_KEY.fullmatch(key):
            raise ValidationException("Idempotency-Key must be 1 to 255 printable ASCII characters")
        digest = hashlib.sha256(key.encode()).hexdigest()
        redis_key = f"companion:idem:{user_id}:{digest}"
        fingerprint = hashlib.sha256(f"{conversation_id}\n{text}".encode()).hexdigest()
        pending = msgspec.json.encode(_Record(fingerprint))
        if await self.redis.set(redis_key, pending, nx=True, ex=self.ttl_s):
            return Claim(self, redis_key, fingerprint)
        raw = await self.redis.get(redis_key)
        if raw is None:  # released or expired between the two calls: claim again
            return await self.claim(user_id, key, conversation_id, text)
        record = msgspec.json.decode(raw, type=_Record)
        if record.fingerprint != fingerprint:
            raise KeyReused("this Idempotency-Key was used for a different message")
        if record.reply is None:
            raise KeyInProgress("a request with this Idempotency-Key is still running")
        return record.reply


async def recorded(first: TurnMeta, events: TurnEvents, claim: Claim | None) -> TurnEvents:
    """Pass the turn's events through; store the finished turn under ``claim`` (a
    panel's events pass through: panels take no key).

    Anything short of a finished turn (an error, a disconnect) releases the key.
    """
    parts: list[str] = []
    finished = False
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, TurnDone) and claim is not None:
                await claim.complete(TurnReply("".join(parts), first, event))
                finished = True
            yield event
    finally:
        await events.aclose()
        if claim is not None and not finished:
            await claim.release()
