"""One engine process, as the API side starts and stops it.

`spawn` starts ``python -m inference.engines.process.worker`` on its end of a
socketpair, sends the `Start` frame and waits for `Ready`; `stop` closes the
channel (the worker then stops its engine and exits) and kills a process that
lingers. What happens while it runs (streams, stats, restarts) is
`ProcessEngine`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from inference.config import ChatEngineConfig
from inference.engines.exits import exit_text
from inference.engines.process.protocol import Channel, FromEngine, LoadFailed, Ready, Start
from inference.errors import EngineUnavailable


@dataclass
class Child:
    """A running engine process and the channel to it."""

    process: asyncio.subprocess.Process
    channel: Channel
    started: float
    reader: asyncio.Task[None] | None = None
    alive: bool = True


async def spawn(config: ChatEngineConfig) -> tuple[Child, int]:
    """Start an engine process for ``config``; the child and its pid once its model loaded.

    Raises `EngineUnavailable` with the reason when it does not come up (the
    engine's load error, or how the process ended).
    """
    ours, theirs = socket.socketpair()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "inference.engines.process.worker",
            str(theirs.fileno()),
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            # its own session: a terminal's Ctrl-C reaches the API, which stops the engine
            start_new_session=True,
        )
    finally:
        theirs.close()
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    child = Child(process, Channel(reader, writer, FromEngine), time.monotonic())
    child.channel.send(Start(config))
    first = await child.channel.receive()
    if not isinstance(first, Ready):
        await stop(child)
        why = first.message if isinstance(first, LoadFailed) else exit_text(process.returncode)
        raise EngineUnavailable(f"engine {config.model_id} did not start: {why}")
    return child, first.pid


async def stop(child: Child, grace_s: float = 10.0) -> None:
    """Close the channel (the child then stops its engine and exits); kill it if it lingers."""
    child.alive = False
    child.channel.close()
    try:
        await asyncio.wait_for(child.process.wait(), grace_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            child.process.kill()
        await child.process.wait()
    if child.reader is not None:
        child.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await child.reader
