"""Keep-alive comments while an event stream is quiet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from server.sse import QUIET, event, with_keepalive


async def slow(items: list[str], gap_s: float, started: list[str]) -> AsyncIterator[str]:
    for item in items:
        await asyncio.sleep(gap_s)
        started.append(item)
        yield item


async def test_quiet_spells_get_keepalives_and_items_keep_their_order() -> None:
    seen = [item async for item in with_keepalive(slow(["a", "b"], 0.3, []), 0.05)]
    assert [item for item in seen if item is not QUIET] == ["a", "b"]
    assert seen[0] is QUIET  # the first item was slow to come
    assert seen.count(QUIET) >= 2


async def test_no_keepalive_when_items_flow() -> None:
    seen = [item async for item in with_keepalive(slow(["a", "b", "c"], 0, []), 10)]
    assert seen == ["a", "b", "c"]


async def test_closing_cancels_the_pending_item() -> None:
    started: list[str] = []
    source = slow(["a", "b"], 0.2, started)
    stream = with_keepalive(source, 0.01)
    assert await anext(stream) is QUIET
    await stream.aclose()  # a client went away while "a" was still being made
    await asyncio.sleep(0.3)
    assert started == []


def test_event_encoding() -> None:
    assert event("token", {"text": "hi"}) == b'event: token\ndata: {"text":"hi"}\n\n'
