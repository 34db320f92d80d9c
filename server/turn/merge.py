"""Several generations' events as one stream, as they come.

A panel's personas generate at once; a single turn is a panel of one, relayed
directly (no task, no queue: nothing is added to its time to first token).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import TypeVar

K = TypeVar("K")
T = TypeVar("T")


async def merged(streams: Mapping[K, AsyncGenerator[T, None]]) -> AsyncGenerator[tuple[K, T], None]:
    """The items of ``streams`` as they come, each tagged with its key.

    Each stream runs in its own task; closing this generator (a client that went
    away) cancels them all, which aborts them in the engine. The first error of any
    stream is raised here after the others stop.
    """
    if len(streams) == 1:
        [(key, stream)] = streams.items()
        async with aclosing(stream) as items:
            async for item in items:
                yield key, item
        return
    async with aclosing(_pumped(streams)) as items:
        async for tagged in items:
            yield tagged


async def _pumped(
    streams: Mapping[K, AsyncGenerator[T, None]],
) -> AsyncGenerator[tuple[K, T], None]:
    queue: asyncio.Queue[tuple[K, T | BaseException | None]] = asyncio.Queue()

    async def pump(key: K, stream: AsyncGenerator[T, None]) -> None:
        try:
            async with aclosing(stream) as items:
                async for item in items:
                    await queue.put((key, item))
            await queue.put((key, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((key, exc))

    tasks = [asyncio.create_task(pump(k, s), name=f"panel-{k}") for k, s in streams.items()]
    try:
        running = len(tasks)
        while running:
            key, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield key, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
