"""Work a user is waiting on, which CPU engines step aside for between decode steps.

On a CPU-only machine the chat engine's decode threads keep every core busy
while any conversation is generating. A new chat turn must, before its first
token, embed the message, classify it, query PostgreSQL and Redis and store
the message: a few milliseconds of work each that, competing with the decode
threads for the cores, took three to five times as long (the "overhead"
measured by ``scripts/bench_chat.py``, docs/chat-api.md).

So a turn holds the `Foreground` while it prepares (`hold`), and the llama.cpp
decode loop calls `LocalPause.between_steps` before each step: while anything
holds the foreground it waits, for at most ``max_pause_s`` and never for
longer than it has decoded since its last pause, so generating streams keep at
least half of the time however many turns arrive. Decoding resumes the moment
the last holder lets go. Streams that are generating lose a few milliseconds
per arriving turn; the arriving user waits far less for a first token.

A GPU engine (vLLM, remote) does not compete for the CPU and ignores this.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_MAX_PAUSE_S = 0.05


class Foreground:
    """Counts holders; decode threads wait (boundedly) while there are any."""

    def __init__(self, max_pause_s: float = DEFAULT_MAX_PAUSE_S) -> None:
        self.max_pause_s = max_pause_s
        self._changed = threading.Condition()
        self._holders = 0
        self.paused_s = 0.0  # total time decode threads waited, for metrics

    @property
    def held(self) -> bool:
        return self._holders > 0

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Foreground work runs inside; cheap enough to use on the event loop."""
        with self._changed:
            self._holders += 1
        try:
            yield
        finally:
            with self._changed:
                self._holders -= 1
                if self._holders == 0:
                    self._changed.notify_all()

    def wait(self, limit_s: float) -> float:
        """Block until nothing holds the foreground or ``limit_s`` passed; seconds waited."""
        if limit_s <= 0:
            return 0.0
        started = time.monotonic()
        with self._changed:
            if self._holders == 0:
                return 0.0
            self._changed.wait_for(lambda: self._holders == 0, timeout=limit_s)
            waited = time.monotonic() - started
            self.paused_s += waited
        return waited


class LocalPause:
    """One decode thread's side: how long it may still pause (at most half its time)."""

    def __init__(self, foreground: Foreground) -> None:
        self.foreground = foreground
        self._resumed = time.monotonic()

    def between_steps(self) -> None:
        if not self.foreground.held:
            return
        decoded_s = time.monotonic() - self._resumed
        if self.foreground.wait(min(self.foreground.max_pause_s, decoded_s)) > 0:
            self._resumed = time.monotonic()


@functools.cache
def default_foreground() -> Foreground:
    """The process's foreground, shared by its chat turns and its CPU engines."""
    return Foreground()
