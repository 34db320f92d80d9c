"""Step timings of a turn, and the observer they are reported to.

`TurnClock` measures; a `StepObserver` is told each step as it is measured (a
turn that fails half way still reports the steps it finished).
`server.turn.metrics` turns them into Prometheus metrics; tests read the numbers
from the clock without a registry.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Collection
from typing import Protocol, TypeVar

T = TypeVar("T")


class StepObserver(Protocol):
    """Told every measured step of every turn."""

    def step_timed(self, step: str, seconds: float) -> None: ...


class TurnClock:
    """Step timings of one turn, in seconds: `timed` awaits, `mark` since the start.

    ``skipped``: steps this kind of turn does not report (they are ignored): a panel
    reports only the steps its personas share; each reply carries its own engine
    time to first token.
    """

    def __init__(self, observer: StepObserver, skipped: Collection[str] = ()) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._observer = observer
        self._skipped = skipped

    async def timed(self, step: str, work: Awaitable[T]) -> T:
        begun = time.perf_counter()
        try:
            return await work
        finally:
            self.record(step, time.perf_counter() - begun)

    def mark(self, step: str) -> None:
        self.record(step, time.perf_counter() - self.started)

    def record(self, step: str, seconds: float) -> None:
        if step in self._skipped:
            return
        self.seconds[step] = seconds
        self._observer.step_timed(step, seconds)

    def report(self) -> dict[str, float]:
        """The ``done`` event's timings: ``<step>_s`` rounded to microseconds."""
        return {f"{step}_s": round(value, 6) for step, value in self.seconds.items()}
