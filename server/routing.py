"""Content routing: which persona and model answer a message, as a pure decision.

`decide_route(session, content, minor=...)` reads the session's routing
fields (`memory.session.SessionState` or anything shaped like it) and the
message's content label, and returns a `RouteDecision`: the route, its
persona prompt id and model id, reasons, flags for the reply
(``needs_verification``, ``refused``), whether the message may enter
long-term memory, and the session's routing fields after it
(`memory.session.RouteCounters`, absolute values, so writing them with
`SessionState.with_counters` inside `SessionStore.update`, which may call it
more than once, is safe to repeat).

Rules, most critical first:

- ``minor_sexual`` -> ``blocked``, never stored in long-term memory; any lock ends.
- ``self_harm`` -> ``crisis`` (supportive persona with help resources),
  whatever the lock; the lock ends and a crisis window of `CRISIS_MESSAGES`
  opens (re-armed by every self-harm message).
- inside a crisis window, every other message stays on ``crisis`` (explicit
  requests included, and counted as no attempt) and the window counts down
  by one; a message that clearly reports the crisis easing
  (``de_escalation``: "I feel better now", "I would never hurt myself") is
  still answered on ``crisis`` and closes the window, so the next message
  is routed normally. ``minor_sexual`` is blocked even then.
- ``violent_threat``/``hate`` -> ``normal``; they end a lock (safe-critical).
- ``explicit``/``fetish``: a user flagged minor is refused (normal route,
  ``refused``); an unverified session stays normal with ``needs_verification``
  and the attempt counted; a verified one enters the route with a lock of
  `LOCK_MESSAGES`.
- otherwise, a locked conversation stays on its route and the lock counts
  down by one per message; at 0 it goes back to ``normal``.

`verify_age(date_of_birth, today)` checks a self-declared date of birth.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal, Protocol, TypeVar

import msgspec

from memory.session import RouteCounters
from models.packaged import packaged_model

Route = Literal["normal", "explicit", "fetish", "crisis", "blocked"]
ROUTES: tuple[Route, ...] = ("normal", "explicit", "fetish", "crisis", "blocked")
LOCK_MESSAGES = 5
CRISIS_MESSAGES = 5
ADULT_AGE = 18
MAX_AGE = 120
_LOCKABLE: frozenset[str] = frozenset({"explicit", "fetish"})
_SAFE_CRITICAL = frozenset({"minor_sexual", "self_harm", "violent_threat", "hate"})


@dataclass(frozen=True, slots=True)
class RouteTarget:
    """What answers on a route: a persona prompt id and a model id from the catalog."""

    persona: str
    model: str


def default_routes(model: str | None = None) -> dict[Route, RouteTarget]:
    """Persona per route, all on one chat model (the built-in one unless given)."""
    chat = model if model is not None else packaged_model("chat").id
    return {
        "normal": RouteTarget("companion", chat),
        "explicit": RouteTarget("companion-explicit", chat),
        "fetish": RouteTarget("companion-fetish", chat),
        "crisis": RouteTarget("crisis-support", chat),
        "blocked": RouteTarget("refusal", chat),
    }


class RoutingSession(Protocol):
    """The session fields routing reads (`memory.session.SessionState` has them)."""

    @property
    def age_verified(self) -> bool: ...
    @property
    def route(self) -> str | None: ...
    @property
    def route_lock_remaining(self) -> int: ...
    @property
    def explicit_attempts(self) -> int: ...
    @property
    def crisis_remaining(self) -> int: ...


class ContentLabel(Protocol):
    """The classification routing reads (`ContentResult` has it)."""

    @property
    def label(self) -> str: ...
    @property
    def de_escalation(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where a message goes and why; recorded with the message."""

    route: Route
    persona: str
    model: str
    reasons: tuple[str, ...]
    changes: RouteCounters  # the session's routing fields after this message
    needs_verification: bool = False
    refused: bool = False  # an explicit route refused for good (the user is a minor)
    store_in_memory: bool = True


@dataclass(frozen=True, slots=True)
class _Step:
    route: Route
    lock: int
    reasons: tuple[str, ...]
    needs_verification: bool = False
    refused: bool = False
    attempted: bool = False
    crisis: int = 0  # crisis window left after this message


def decide_route(
    session: RoutingSession,
    content: ContentLabel,
    *,
    minor: bool = False,
    routes: Mapping[Route, RouteTarget] | None = None,
    lock_messages: int = LOCK_MESSAGES,
    crisis_messages: int = CRISIS_MESSAGES,
) -> RouteDecision:
    """Route one message; ``minor`` is the user's permanent minor flag."""
    step = _step(session, content, minor, lock_messages, crisis_messages)
    target = (routes if routes is not None else default_routes())[step.route]
    changes = RouteCounters(
        route=step.route,
        route_lock_remaining=step.lock,
        explicit_attempts=session.explicit_attempts + int(step.attempted),
        last_content_label=content.label,
        crisis_remaining=step.crisis,
    )
    return RouteDecision(
        route=step.route,
        persona=target.persona,
        model=target.model,
        reasons=step.reasons,
        changes=changes,
        needs_verification=step.needs_verification,
        refused=step.refused,
        store_in_memory=content.label != "minor_sexual",
    )


def _step(
    session: RoutingSession, content: ContentLabel, minor: bool, lock: int, crisis: int
) -> _Step:
    label = content.label
    if label == "minor_sexual":
        reasons = ("minor_sexual is always blocked", "not stored in memory")
        return _Step("blocked", 0, reasons, crisis=session.crisis_remaining)
    if label == "self_harm":
        reason = f"self_harm: crisis route, overrides any lock, crisis window {crisis}"
        return _Step("crisis", 0, (reason,), crisis=crisis)
    if session.crisis_remaining > 0:
        return _crisis_window_step(session, content)
    return _ordinary_step(session, label, minor, lock)


def _crisis_window_step(session: RoutingSession, content: ContentLabel) -> _Step:
    if content.de_escalation:
        reason = f"{content.label}: de-escalation, crisis route answers it and the window closes"
        return _Step("crisis", 0, (reason,), crisis=0)
    remaining = session.crisis_remaining - 1
    return _Step(
        "crisis", 0, (f"{content.label} inside crisis window, {remaining} left",), crisis=remaining
    )


def _ordinary_step(session: RoutingSession, label: str, minor: bool, lock_messages: int) -> _Step:
    if label in _SAFE_CRITICAL:
        return _Step("normal", 0, (f"{label}: safe-critical, ends any lock",))
    if label in _LOCKABLE:
        return _explicit_step(session, label, minor, lock_messages)
    return _locked_step(session, label, minor)


def _explicit_step(session: RoutingSession, label: str, minor: bool, lock: int) -> _Step:
    route: Route = "fetish" if label == "fetish" else "explicit"
    if minor:
        return _Step(
            "normal", 0, (f"{label} refused: user is a minor",), refused=True, attempted=True
        )
    if not session.age_verified:
        reason = f"{label} needs age verification in this session"
        return _Step("normal", 0, (reason,), needs_verification=True, attempted=True)
    return _Step(route, lock, (f"{label}: verified session, lock {lock}",))


def _locked_step(session: RoutingSession, label: str, minor: bool) -> _Step:
    current = session.route
    locked = current in _LOCKABLE and session.route_lock_remaining > 0
    if not locked or minor or not session.age_verified:
        return _Step("normal", 0, (f"{label}: normal route",))
    remaining = session.route_lock_remaining - 1
    route: Route = "fetish" if current == "fetish" else "explicit"
    return _Step(route, remaining, (f"{label} inside {route} lock, {remaining} left",))


class InvalidDateOfBirth(ValueError):
    """A date of birth that cannot be right: in the future, or over 120 years ago."""


@dataclass(frozen=True, slots=True)
class AgeVerification:
    """The result of a self-declared date of birth.

    ``adult``: the session may be marked verified. Otherwise ``mark_minor``:
    the user is a minor from now on, permanently (the caller persists it).
    """

    age: int
    adult: bool
    mark_minor: bool
    reasons: tuple[str, ...] = field(default=())


def verify_age(date_of_birth: date, today: date) -> AgeVerification:
    """Check a date of birth on ``today``; `InvalidDateOfBirth` for impossible dates."""
    if isinstance(date_of_birth, datetime) or isinstance(today, datetime):
        raise TypeError("verify_age takes dates, not datetimes")
    if date_of_birth > today:
        raise InvalidDateOfBirth(f"date of birth {date_of_birth} is in the future")
    age = age_on(date_of_birth, today)
    if age > MAX_AGE:
        raise InvalidDateOfBirth(f"date of birth {date_of_birth} means an age over {MAX_AGE}")
    if age >= ADULT_AGE:
        return AgeVerification(age, adult=True, mark_minor=False, reasons=(f"age {age}: adult",))
    return AgeVerification(age, adult=False, mark_minor=True, reasons=(f"age {age}: minor",))


def age_on(date_of_birth: date, today: date) -> int:
    """Whole years between the two dates (a 29 February birthday counts on 1 March)."""
    had_birthday = (today.month, today.day) >= (date_of_birth.month, date_of_birth.day)
    return today.year - date_of_birth.year - (0 if had_birthday else 1)


S = TypeVar("S", bound=msgspec.Struct)


def apply_verification(state: S, verification: AgeVerification, *, minor: bool, now: datetime) -> S:
    """``state`` with the session verified when an adult who is not flagged minor declared it.

    A user flagged minor is never verified, whatever date they give later.
    """
    if not verification.adult or minor:
        return msgspec.structs.replace(
            state, age_verified=False, age_verified_at=None, route=None, route_lock_remaining=0
        )
    return msgspec.structs.replace(state, age_verified=True, age_verified_at=now)
