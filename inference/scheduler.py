"""Admission order for an engine: a plain state machine, no model, no threads.

Policy:

- **Priority first**: every waiting interactive request goes before any
  background one.
- **Fair across users**: within a priority, the next request is the one whose
  user has the fewest requests running (counting those admitted in the same
  round); ties go to the earliest arrival. One user's ten requests therefore
  take turns with another user's one instead of queueing ahead of it.
- **No skipping**: the engine admits a request only when its KV need (prompt
  tokens not already cached plus ``max_tokens``) fits in the free and
  reclaimable cells. When the request chosen by the policy does not fit, the
  round stops: smaller requests behind it do not overtake it, so a long
  prompt cannot starve.
- **No preemption for space**: admission reserves the cells a request may
  still need (its remaining prompt plus its remaining ``max_tokens``), so a
  running sequence never runs out of KV and is never evicted to make room.
  The price is admitting fewer requests when clients ask for large
  ``max_tokens``. (If llama.cpp still cannot place a batch, the engine first
  evicts idle cached sequences to host RAM; see `inference.engines.llamacpp`.)
- **Bounded queue**: `submit` fails fast with `EngineOverloaded` when
  ``max_waiting`` requests are already waiting.
- **Deadlines**: a request whose deadline passes while waiting is removed and
  handed back by `expire`; the engine finishes running ones.
- **Cancellation**: `cancel` removes a waiting request at once; the engine
  frees a running one before its next decode step.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from inference.errors import EngineOverloaded
from inference.types import Priority

T = TypeVar("T")


@dataclass
class Ticket(Generic[T]):
    """A request as the scheduler sees it; ``payload`` is the engine's own state."""

    request_id: str
    user_id: str
    priority: Priority
    payload: T
    arrival: float = 0.0
    deadline: float | None = None  # absolute, on the scheduler's clock
    sequence: int = 0  # submission order, breaks ties between equal arrival times


@dataclass
class Scheduler(Generic[T]):
    max_waiting: int = 256
    clock: Callable[[], float] = time.monotonic
    _waiting: dict[str, Ticket[T]] = field(default_factory=dict)
    _running: Counter[str] = field(default_factory=Counter)
    _sequence: int = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(self._running.values())

    def submit(self, ticket: Ticket[T], timeout_s: float | None = None) -> None:
        """Queue ``ticket``; raise `EngineOverloaded` when the queue is full."""
        if len(self._waiting) >= self.max_waiting:
            raise EngineOverloaded(f"{self.max_waiting} requests already waiting", 1.0)
        if ticket.request_id in self._waiting:
            raise ValueError(f"request {ticket.request_id} is already waiting")
        ticket.arrival = self.clock()
        ticket.sequence = self._sequence = self._sequence + 1
        if timeout_s is not None:
            ticket.deadline = ticket.arrival + timeout_s
        self._waiting[ticket.request_id] = ticket

    def cancel(self, request_id: str) -> Ticket[T] | None:
        """Remove a waiting request; None when it is not waiting (running or unknown)."""
        return self._waiting.pop(request_id, None)

    def expire(self) -> list[Ticket[T]]:
        """Remove and return the waiting requests whose deadline has passed."""
        now = self.clock()
        late = [t for t in self._waiting.values() if t.deadline is not None and t.deadline <= now]
        for ticket in late:
            del self._waiting[ticket.request_id]
        return late

    def admit(self, fits: Callable[[Ticket[T]], bool]) -> list[Ticket[T]]:
        """Admit waiting requests in policy order while ``fits`` accepts them.

        ``fits`` is asked about the policy's next choice only, and must account
        for what it already accepted in this round.
        """
        admitted: list[Ticket[T]] = []
        while self._waiting:
            ticket = min(self._waiting.values(), key=self._order)
            if not fits(ticket):
                break
            del self._waiting[ticket.request_id]
            self._running[ticket.user_id] += 1
            admitted.append(ticket)
        return admitted

    def finished(self, ticket: Ticket[T]) -> None:
        """A running request left the engine (done, aborted, failed)."""
        self._running[ticket.user_id] -= 1
        if self._running[ticket.user_id] <= 0:
            del self._running[ticket.user_id]

    def _order(self, ticket: Ticket[T]) -> tuple[int, int, float, int]:
        running = self._running[ticket.user_id]
        return (int(ticket.priority), running, ticket.arrival, ticket.sequence)
