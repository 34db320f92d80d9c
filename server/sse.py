"""Server-sent events: encoding, and keep-alive comments while a stream is quiet.

A turn can wait a long time before its first token (the engine's queue, a
long prompt). Proxies and browsers close connections that stay silent, so
after ``interval_s`` without an event the stream sends a comment line
(``: keep-alive``), which every SSE client ignores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Final, TypeVar

import msgspec

T = TypeVar("T")

KEEPALIVE: Final = b": keep-alive\n\n"
# Route opt key: a handler whose opt sets it is not gzipped (`server.app`). Streamed
# events are a few bytes each, flushed one by one, so gzip only adds CPU on the event
# loop (about 0.03 ms an event, measured with yappi on a turn burst) and a sync marker
# to every event.
UNCOMPRESSED: Final = "uncompressed"


class _Quiet:
    """Yielded by `with_keepalive` when ``interval_s`` passed without an item."""


QUIET: Final = _Quiet()


def event(name: str, body: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(body) + b"\n\n"


async def with_keepalive(items: AsyncIterator[T], interval_s: float) -> AsyncIterator[T | _Quiet]:
    """``items`` as they come, with `QUIET` after every ``interval_s`` of silence.

    The next item is awaited in a task, so a quiet spell does not cancel it;
    closing this iterator (a client that went away) cancels that task, which
    cancels the work behind ``items``.
    """
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(items))
            done, _ = await asyncio.wait({pending}, timeout=interval_s)
            if not done:
                yield QUIET
                continue
            future, pending = pending, None
            try:
                item = future.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
