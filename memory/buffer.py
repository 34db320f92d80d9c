"""The conversation buffer in Redis: the newest messages of a conversation and its summary.

A cache in front of `memory.messages` (PostgreSQL is the source of truth),
kept so that a chat turn reads its history in one Redis round trip. Keys of
one conversation (the braces are a Redis Cluster hash tag, so the scripts below
may touch several of them):

- ``companion:buffer:{<id>}``: a list of msgpack-encoded `StoredMessage`, oldest
  first, trimmed to the newest ``size`` on every push;
- ``companion:buffer:{<id>}:meta``: a hash whose ``last_id`` is the id of the
  newest message the list reflects (``0``: the conversation has none);
- ``companion:buffer:{<id>}:summary``: a hash with a copy of the rolling summary
  of older messages (``text``) and the id of the newest message it covers
  (``through_id``); the summary itself is durable in PostgreSQL
  (`memory.summaries`), and `memory.conversation_log` refreshes this copy.

All three expire after ``ttl_s`` without use. The list only ever grows by a
message whose predecessor is the current ``last_id`` (the push script checks
it), so a buffer with ``last_id`` N holds exactly the newest messages up to N.
A push that would leave a gap drops the buffer instead; the next read rebuilds
it from PostgreSQL (`memory.conversation_log`). Both scripts are registered
once per buffer object with ``register_script``; each runs alone on the server.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.typing import EncodableT

from memory.messages import StoredMessage


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """How many recent messages a buffer keeps and how long an idle one lives."""

    size: int = 40
    ttl_s: int = 86400


class Summary(msgspec.Struct, frozen=True):
    """The rolling summary of a conversation's older messages, up to ``through_id``."""

    text: str
    through_id: int


class BufferSnapshot(msgspec.Struct, frozen=True):
    """What Redis holds for a conversation; ``messages`` None: no (usable) buffer."""

    messages: list[StoredMessage] | None
    last_id: int | None
    summary: Summary | None


# KEYS: list, meta. ARGV: id, previous id (0: first message), encoded message, size, ttl.
# Returns 1 pushed, 0 nothing to push onto, -1 already there, -2 gap (buffer dropped).
_PUSH = """
local last = redis.call('HGET', KEYS[2], 'last_id')
if not last then
  if ARGV[2] ~= '0' then return 0 end
  last = '0'
end
if last == ARGV[1] then return -1 end
if last ~= ARGV[2] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return -2
end
redis.call('RPUSH', KEYS[1], ARGV[3])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[2], 'last_id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""

# KEYS: list, meta. ARGV: last id, ttl, encoded messages (oldest first).
# A buffer past this snapshot is newer (pushed meanwhile): kept. One at the same
# id is replaced: its content is the same, or it did not decode (older version).
_REPLACE = """
local last = redis.call('HGET', KEYS[2], 'last_id')
if last and tonumber(last) > tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
if #ARGV > 2 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 3)) end
redis.call('HSET', KEYS[2], 'last_id', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""

# KEYS: summary. ARGV: text, through id, ttl. A late job never replaces a newer summary.
_SET_SUMMARY = """
local through = redis.call('HGET', KEYS[1], 'through_id')
if through and tonumber(through) > tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'text', ARGV[1], 'through_id', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(StoredMessage)


def buffer_keys(conversation_id: uuid.UUID) -> tuple[str, str, str]:
    """The list, meta and summary keys of a conversation's buffer."""
    base = f"companion:buffer:{{{conversation_id}}}"
    return base, f"{base}:meta", f"{base}:summary"


class ConversationBuffer:
    """Recent messages and summary of every conversation, shared by all instances.

    Methods raise redis-py errors when Redis is unreachable: the caller
    (`ConversationLog`) decides that a cache miss is not a failure.
    """

    def __init__(self, redis: Redis, config: BufferConfig | None = None) -> None:
        self._redis = redis
        self.config = config or BufferConfig()
        self._push = redis.register_script(_PUSH)
        self._replace = redis.register_script(_REPLACE)
        self._set_summary = redis.register_script(_SET_SUMMARY)

    async def read(self, conversation_id: uuid.UUID) -> BufferSnapshot:
        """The buffer and summary as one consistent snapshot; refreshes their TTL."""
        keys = buffer_keys(conversation_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.lrange(keys[0], 0, -1)
            pipe.hget(keys[1], "last_id")
            pipe.hmget(keys[2], ["text", "through_id"])
            for key in keys:
                pipe.expire(key, self.config.ttl_s)
            items, last, summary, *_ = await pipe.execute()
        return _snapshot(items, last, summary)

    async def push(self, message: StoredMessage, previous_id: int | None) -> bool:
        """Append ``message`` if it directly follows the buffer's newest; True if pushed.

        Otherwise the buffer is left to be rebuilt: already holding the message
        (no change), absent (no change), or missing ``previous_id`` (dropped).
        """
        keys = buffer_keys(message.conversation_id)
        args: list[EncodableT] = [
            message.id,
            previous_id or 0,
            _encoder.encode(message),
            self.config.size,
            self.config.ttl_s,
        ]
        return bool(await self._push(keys=keys[:2], args=args) == 1)

    async def replace(self, conversation_id: uuid.UUID, messages: list[StoredMessage]) -> bool:
        """Store ``messages`` (the newest ones, oldest first) as the buffer; True if stored.

        A buffer that already reaches a newer message is kept.
        """
        newest = messages[-self.config.size :] if messages else []
        last_id = newest[-1].id if newest else 0
        args: list[EncodableT] = [last_id, self.config.ttl_s]
        args += [_encoder.encode(m) for m in newest]
        keys = buffer_keys(conversation_id)
        return bool(await self._replace(keys=keys[:2], args=args) == 1)

    async def set_summary(self, conversation_id: uuid.UUID, text: str, through_id: int) -> bool:
        """Record the summary of messages up to ``through_id``; False if a newer one is kept."""
        key = buffer_keys(conversation_id)[2]
        args: list[EncodableT] = [text, through_id, self.config.ttl_s]
        return bool(await self._set_summary(keys=[key], args=args) == 1)

    async def invalidate(self, conversation_id: uuid.UUID) -> None:
        """Drop the buffered messages (not the summary); the next read rebuilds them."""
        await self._redis.delete(*buffer_keys(conversation_id)[:2])


def _snapshot(items: list[bytes], last: bytes | None, summary: list[Any]) -> BufferSnapshot:
    text, through = summary
    found = None if text is None or through is None else Summary(text.decode(), int(through))
    try:
        messages = [_decoder.decode(item) for item in items]
    except msgspec.DecodeError:
        # Written by a version whose message shape differs (rolling upgrade): rebuild.
        return BufferSnapshot(None, None, found)
    last_id = None if last is None else int(last)
    if not _consistent(messages, last_id):
        return BufferSnapshot(None, None, found)
    return BufferSnapshot(messages, last_id, found)


def _consistent(messages: list[StoredMessage], last_id: int | None) -> bool:
    # Keys are evicted one by one under memory pressure: a list without its
    # meta, or a meta whose list is gone, is no buffer at all.
    if last_id is None:
        return False
    if not messages:
        return last_id == 0
    return messages[-1].id == last_id
