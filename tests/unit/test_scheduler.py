from __future__ import annotations

import pytest

from inference.errors import EngineOverloaded
from inference.scheduler import Scheduler, Ticket
from inference.types import Priority


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def ticket(request_id: str, user: str, priority: Priority = Priority.INTERACTIVE) -> Ticket[None]:
    return Ticket(request_id=request_id, user_id=user, priority=priority, payload=None)


def admit_n(scheduler: Scheduler[None], n: int) -> list[str]:
    budget = iter(range(n))
    return [t.request_id for t in scheduler.admit(lambda _: next(budget, None) is not None)]


def test_interactive_goes_before_background() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(ticket("bg", "u1", Priority.BACKGROUND))
    scheduler.submit(ticket("chat", "u2"))
    assert admit_n(scheduler, 2) == ["chat", "bg"]


def test_one_users_many_requests_do_not_starve_another() -> None:
    scheduler: Scheduler[None] = Scheduler()
    for i in range(10):
        scheduler.submit(ticket(f"a{i}", "alice"))
    scheduler.submit(ticket("b0", "bob"))
    assert admit_n(scheduler, 2) == ["a0", "b0"]


def test_fairness_counts_requests_already_running() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(ticket("a0", "alice"))
    assert admit_n(scheduler, 1) == ["a0"]
    scheduler.submit(ticket("a1", "alice"))
    scheduler.submit(ticket("b0", "bob"))  # later, but bob runs nothing
    assert admit_n(scheduler, 1) == ["b0"]


def test_finished_requests_stop_counting() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(first := ticket("a0", "alice"))
    admit_n(scheduler, 1)
    scheduler.finished(first)
    assert scheduler.running == 0
    scheduler.submit(ticket("b0", "bob"))
    scheduler.submit(ticket("a1", "alice"))
    assert admit_n(scheduler, 2) == ["b0", "a1"]  # arrival order again


def test_a_request_that_does_not_fit_is_not_overtaken() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(ticket("big", "alice"))
    scheduler.submit(ticket("small", "bob"))
    asked: list[str] = []

    def fits(t: Ticket[None]) -> bool:
        asked.append(t.request_id)
        return t.request_id != "big"

    assert scheduler.admit(fits) == []
    assert asked == ["big"]
    assert scheduler.waiting == 2


def test_full_queue_fails_fast() -> None:
    scheduler: Scheduler[None] = Scheduler(max_waiting=2)
    scheduler.submit(ticket("r1", "u"))
    scheduler.submit(ticket("r2", "u"))
    with pytest.raises(EngineOverloaded) as info:
        scheduler.submit(ticket("r3", "u"))
    assert info.value.retry_after_s > 0
    assert scheduler.waiting == 2


def test_cancel_removes_a_waiting_request() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(ticket("r1", "u"))
    assert scheduler.cancel("r1") is not None
    assert scheduler.cancel("r1") is None
    assert admit_n(scheduler, 5) == []


def test_deadlines_expire_waiting_requests() -> None:
    clock = Clock()
    scheduler: Scheduler[None] = Scheduler(clock=clock)
    scheduler.submit(ticket("soon", "u"), timeout_s=1.0)
    scheduler.submit(ticket("later", "u"), timeout_s=10.0)
    scheduler.submit(ticket("never", "u"))
    clock.now = 5.0
    assert [t.request_id for t in scheduler.expire()] == ["soon"]
    assert scheduler.waiting == 2


def test_duplicate_request_ids_are_refused() -> None:
    scheduler: Scheduler[None] = Scheduler()
    scheduler.submit(ticket("r1", "u"))
    with pytest.raises(ValueError, match="already waiting"):
        scheduler.submit(ticket("r1", "u"))
