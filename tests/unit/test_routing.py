"""Every route transition of the content routing decision, on plain SessionState values."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime

import pytest

from memory.session import SessionState
from server.routing import (
    CRISIS_MESSAGES,
    LOCK_MESSAGES,
    InvalidDateOfBirth,
    RouteDecision,
    apply_verification,
    decide_route,
    default_routes,
    verify_age,
)

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
TODAY = date(2025, 6, 1)


@dataclass(frozen=True)
class Label:
    label: str
    de_escalation: bool = False


def fresh() -> SessionState:
    return SessionState(uuid.uuid4(), uuid.uuid4(), created_at=NOW, updated_at=NOW)


def verified() -> SessionState:
    return apply_verification(fresh(), verify_age(date(1990, 1, 1), TODAY), minor=False, now=NOW)


def turn(
    state: SessionState, label: str, minor: bool = False, calmer: bool = False
) -> tuple[SessionState, RouteDecision]:
    decision = decide_route(state, Label(label, calmer), minor=minor)
    return state.with_counters(decision.changes), decision


def test_unverified_explicit_attempt_stays_normal_and_is_counted() -> None:
    state, decision = turn(fresh(), "explicit")
    assert decision.route == "normal" and decision.needs_verification
    assert state.explicit_attempts == 1 and state.route == "normal"
    state, decision = turn(state, "fetish")
    assert decision.route == "normal" and state.explicit_attempts == 2


def test_verification_then_explicit_enters_route_with_lock() -> None:
    state, decision = turn(verified(), "explicit")
    assert (decision.route, decision.persona) == ("explicit", "companion-explicit")
    assert not decision.needs_verification
    assert state.route_lock_remaining == LOCK_MESSAGES and state.explicit_attempts == 0


def test_fetish_route_after_verification() -> None:
    state, decision = turn(verified(), "fetish")
    assert decision.route == "fetish" and state.route_lock_remaining == LOCK_MESSAGES


def test_lock_counts_down_and_releases_after_five_messages() -> None:
    state, _ = turn(verified(), "explicit")
    for remaining in range(LOCK_MESSAGES - 1, -1, -1):
        state, decision = turn(state, "safe")
        assert decision.route == "explicit"
        assert state.route_lock_remaining == remaining
    state, decision = turn(state, "safe")
    assert decision.route == "normal" and state.route_lock_remaining == 0


def test_explicit_again_rearms_the_lock() -> None:
    state, _ = turn(verified(), "explicit")
    state, _ = turn(state, "romantic")
    state, decision = turn(state, "explicit")
    assert decision.route == "explicit" and state.route_lock_remaining == LOCK_MESSAGES


def test_crisis_overrides_the_lock() -> None:
    state, _ = turn(verified(), "explicit")
    state, decision = turn(state, "self_harm")
    assert (decision.route, decision.persona) == ("crisis", "crisis-support")
    assert state.route_lock_remaining == 0
    _, decision = turn(state, "safe")
    assert decision.route == "crisis"  # the crisis window, not the explicit lock


def test_self_harm_goes_to_crisis_without_a_lock() -> None:
    _, decision = turn(fresh(), "self_harm")
    assert decision.route == "crisis" and decision.store_in_memory


@pytest.mark.parametrize("label", ["violent_threat", "hate"])
def test_safe_critical_content_ends_the_lock(label: str) -> None:
    state, _ = turn(verified(), "explicit")
    state, decision = turn(state, label)
    assert decision.route == "normal" and state.route_lock_remaining == 0


def test_minor_sexual_is_blocked_and_never_stored() -> None:
    state, _ = turn(verified(), "explicit")
    state, decision = turn(state, "minor_sexual")
    assert (decision.route, decision.persona) == ("blocked", "refusal")
    assert decision.store_in_memory is False
    assert state.route_lock_remaining == 0
    assert state.last_content_label == "minor_sexual"


def test_other_labels_are_stored() -> None:
    for label in ("safe", "romantic", "explicit", "fetish", "self_harm", "hate"):
        assert decide_route(fresh(), Label(label)).store_in_memory


def test_under_18_marks_minor_and_is_never_verified() -> None:
    result = verify_age(date(2010, 6, 2), TODAY)
    assert (result.age, result.adult, result.mark_minor) == (14, False, True)
    state = apply_verification(fresh(), result, minor=True, now=NOW)
    assert not state.age_verified
    # A later adult date of birth does not verify a user flagged minor.
    later = apply_verification(state, verify_age(date(1990, 1, 1), TODAY), minor=True, now=NOW)
    assert not later.age_verified and later.age_verified_at is None


def test_minor_is_refused_explicit_routes_even_when_session_verified() -> None:
    for label in ("explicit", "fetish"):
        state, decision = turn(verified(), label, minor=True)
        assert decision.route == "normal" and decision.refused
        assert not decision.needs_verification
        assert state.explicit_attempts == 1


def test_minor_user_does_not_stay_in_a_lock() -> None:
    state, _ = turn(verified(), "explicit")
    _, decision = turn(state, "safe", minor=True)
    assert decision.route == "normal"


def test_adult_verification() -> None:
    result = verify_age(date(2007, 6, 1), TODAY)
    assert (result.age, result.adult, result.mark_minor) == (18, True, False)
    assert verify_age(date(2007, 6, 2), TODAY).adult is False  # 18 tomorrow
    state = apply_verification(fresh(), result, minor=False, now=NOW)
    assert state.age_verified and state.age_verified_at == NOW


def test_leap_day_birthday() -> None:
    assert verify_age(date(2004, 2, 29), date(2022, 2, 28)).age == 17
    assert verify_age(date(2004, 2, 29), date(2022, 3, 1)).age == 18


@pytest.mark.parametrize(
    ("dob", "message"),
    [(date(2025, 6, 2), "future"), (date(1900, 1, 1), "over 120")],
)
def test_impossible_dates_are_rejected(dob: date, message: str) -> None:
    with pytest.raises(InvalidDateOfBirth, match=message):
        verify_age(dob, TODAY)


def test_every_route_names_a_persona_and_a_model() -> None:
    routes = default_routes("my-model")
    assert set(routes) == {"normal", "explicit", "fetish", "crisis", "blocked"}
    assert all(t.model == "my-model" and t.persona for t in routes.values())
    decision = decide_route(fresh(), Label("safe"), routes=routes)
    assert decision.model == "my-model" and decision.reasons


def test_decision_is_idempotent_to_apply() -> None:
    state = fresh()
    decision = decide_route(state, Label("explicit"))
    once = state.with_counters(decision.changes)
    assert once.with_counters(decision.changes) == once


def test_crisis_window_holds_then_releases() -> None:
    state, decision = turn(fresh(), "self_harm")
    assert state.crisis_remaining == CRISIS_MESSAGES and state.route == "crisis"
    for remaining in range(CRISIS_MESSAGES - 1, -1, -1):
        state, decision = turn(state, "safe")
        assert decision.route == "crisis" and state.crisis_remaining == remaining
    state, decision = turn(state, "safe")
    assert decision.route == "normal" and state.crisis_remaining == 0


def test_self_harm_rearms_the_crisis_window() -> None:
    state, _ = turn(fresh(), "self_harm")
    state, _ = turn(state, "safe")
    state, _ = turn(state, "safe")
    assert state.crisis_remaining == CRISIS_MESSAGES - 2
    state, decision = turn(state, "self_harm")
    assert decision.route == "crisis" and state.crisis_remaining == CRISIS_MESSAGES


def test_de_escalation_is_answered_on_crisis_and_closes_the_window() -> None:
    state, _ = turn(fresh(), "self_harm")
    state, decision = turn(state, "safe", calmer=True)
    assert decision.route == "crisis" and state.crisis_remaining == 0
    state, decision = turn(state, "safe")
    assert decision.route == "normal"


def test_de_escalation_outside_a_crisis_changes_nothing() -> None:
    state, decision = turn(fresh(), "safe", calmer=True)
    assert decision.route == "normal" and state.crisis_remaining == 0


def test_self_harm_with_a_de_escalation_phrase_still_opens_the_window() -> None:
    state, decision = turn(fresh(), "self_harm", calmer=True)
    assert decision.route == "crisis" and state.crisis_remaining == CRISIS_MESSAGES


@pytest.mark.parametrize("label", ["explicit", "fetish", "romantic", "hate", "violent_threat"])
def test_crisis_window_holds_any_other_label_and_counts_no_attempt(label: str) -> None:
    state, _ = turn(verified(), "self_harm")
    state, decision = turn(state, label)
    assert decision.route == "crisis" and not decision.needs_verification
    assert state.explicit_attempts == 0 and state.route_lock_remaining == 0
    assert state.crisis_remaining == CRISIS_MESSAGES - 1


def test_minor_sexual_is_blocked_inside_a_crisis_window_which_stays_open() -> None:
    state, _ = turn(fresh(), "self_harm")
    state, decision = turn(state, "minor_sexual")
    assert decision.route == "blocked" and not decision.store_in_memory
    assert state.crisis_remaining == CRISIS_MESSAGES
    _, decision = turn(state, "safe")
    assert decision.route == "crisis"


def test_explicit_lock_is_not_restored_after_a_crisis_window() -> None:
    state, _ = turn(verified(), "explicit")
    state, _ = turn(state, "self_harm")
    state, _ = turn(state, "safe", calmer=True)
    state, decision = turn(state, "safe")
    assert decision.route == "normal" and state.route_lock_remaining == 0
    state, decision = turn(state, "explicit")
    assert decision.route == "explicit"  # still verified: a new explicit request re-enters
