"""The engine process: runs one in-process engine and serves it over the channel.

Started by `inference.engines.process.ProcessEngine` as
``python -m inference.engines.process.worker FD``, FD being its end of a
socketpair. It builds the engine the `Start` frame describes, answers `Ready`,
then serves requests until the channel closes (the API process stopped or
died: then this process stops too, so no engine outlives its server).

Logs go to stderr, which it shares with the API process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import sys
from collections.abc import Sequence

from inference.engine import Engine
from inference.engines.process.protocol import (
    Abort,
    Channel,
    Delta,
    Done,
    Forget,
    Forgotten,
    LoadFailed,
    Measure,
    Measured,
    Observed,
    Ready,
    Start,
    Stats,
    Submit,
    ToEngine,
    failed,
)
from inference.errors import EngineUnavailable, InferenceError
from inference.types import Finished, GenerationRequest, TextDelta

log = logging.getLogger("inference.engine_process")

STATS_EVERY_S = 0.25


class _Forwarder:
    """The engine's `EngineObserver`: finished requests go to the API process's metrics."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._loop = asyncio.get_running_loop()

    def request_finished(
        self, model_id: str, finished: Finished, inter_token_s: Sequence[float]
    ) -> None:
        # called from the engine's decode thread; the channel belongs to the event loop
        message = Observed(model_id, finished, list(inter_token_s))
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._channel.send, message)


class _Server:
    def __init__(self, channel: Channel, engine: Engine) -> None:
        self._channel, self._engine = channel, engine
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def serve(self) -> int:
        """Serve until the channel closes (0) or the engine stops serving (70)."""
        watch = asyncio.create_task(self._publish_stats())
        receive = asyncio.create_task(self._receive())
        try:
            await asyncio.wait((watch, receive), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, receive, *self._tasks.values()):
                task.cancel()
        return 70 if watch.done() else 0

    async def _receive(self) -> None:
        while (message := await self._channel.receive()) is not None:
            self._handle(message)

    def _handle(self, message: ToEngine) -> None:
        if isinstance(message, Submit):
            request = message.request
            task = asyncio.create_task(self._run(request))
            self._tasks[request.request_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(request.request_id, None))
        elif isinstance(message, Measure):
            request = message.request
            task = asyncio.create_task(self._measure(request))
            self._tasks[request.request_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(request.request_id, None))
        elif isinstance(message, Forget):
            task = asyncio.create_task(self._forget(message))
            self._tasks[message.request_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(message.request_id, None))
        elif isinstance(message, Abort):
            running = self._tasks.get(message.request_id)
            if running is not None:
                running.cancel()  # closing the stream aborts the request inside the engine

    async def _run(self, request: GenerationRequest) -> None:
        rid = request.request_id
        try:
            async with contextlib.aclosing(self._engine.generate(request)) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        self._channel.send(Delta(rid, event.text))
                    else:
                        self._channel.send(Done(rid, event))
        except InferenceError as exc:
            self._channel.send(failed(rid, exc))
        except Exception as exc:  # an engine bug: this request fails, the process serves on
            log.exception("request failed in the engine process")
            self._channel.send(failed(rid, EngineUnavailable(f"engine error: {exc}")))

    async def _measure(self, request: GenerationRequest) -> None:
        try:
            size = await self._engine.measure(request)
        except InferenceError as exc:
            self._channel.send(failed(request.request_id, exc))
            return
        self._channel.send(Measured(request.request_id, size))

    async def _forget(self, message: Forget) -> None:
        try:
            await self._engine.forget(message.user_id)
        except InferenceError as exc:
            self._channel.send(failed(message.request_id, exc))
            return
        self._channel.send(Forgotten(message.request_id))

    async def _publish_stats(self) -> None:
        """Stats snapshots for the API's metrics; returns when the engine stopped serving
        (its decode loop died): this process then exits and the supervisor starts another."""
        while True:
            try:
                await self._engine.health()
            except InferenceError as exc:
                log.error("engine stopped serving: %s", exc)
                return
            self._channel.send(Stats(self._engine.stats()))
            await self._channel.drain()
            await asyncio.sleep(STATS_EVERY_S)


async def _main(fd: int) -> int:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    channel = Channel(reader, writer, ToEngine)
    start = await channel.receive()
    if not isinstance(start, Start):
        return 2
    engine = _build(start, channel)
    try:
        await engine.start()
    except InferenceError as exc:
        channel.send(LoadFailed(str(exc)))
        await channel.drain()
        return 1
    channel.send(Ready(os.getpid()))
    try:
        return await _Server(channel, engine).serve()
    finally:
        await engine.close()


def _build(start: Start, channel: Channel) -> Engine:
    from inference.factory import create_engine

    config = dataclasses.replace(start.config, process="inline")
    engine = create_engine(config, observer=_Forwarder(channel))
    if engine is None:
        raise EngineUnavailable(f"no engine for backend {config.backend!r}")
    return engine


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("COMPANION_LOG_LEVEL", "info").upper(),
        format="engine %(process)d %(levelname)s %(name)s: %(message)s",
    )
    sys.exit(asyncio.run(_main(int(sys.argv[1]))))


if __name__ == "__main__":
    main()
