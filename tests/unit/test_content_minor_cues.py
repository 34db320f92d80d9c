"""Age signals without a number, and when the prototypes alone may open a route; no model."""

from __future__ import annotations

import pytest

from inference.classifiers.content import combine_layers
from inference.classifiers.content_minor_cues import minor_cue, unleet
from inference.classifiers.content_rules import CONTENT_LABELS, RuleMatch, match_content_rules


@pytest.mark.parametrize(
    ("text", "cue"),
    [
        # the writer is at school or a child now
        ("im a ninth grader fyi", "the writer is a child or at school"),
        ("I'm currently in year 10", "the writer is a child or at school"),
        ("I'm in grade 7 and bored", "the writer is a child or at school"),
        ("i'm a junior in hs", "the writer is a child or at school"),
        ("I attend middle school", "the writer is a child or at school"),
        ("I'm still just a kid", "the writer is a child or at school"),
        ("I'm not 18 yet", "the writer is a child or at school"),
        ("As a tenth grader I have questions", "the writer is a child or at school"),
        # a memory in another clause does not hide the present
        ("I used to be shy, but im in 8th grade now", "the writer is a child or at school"),
        ("im in midle skool", None),  # two misspellings at once: out of reach
        ("im in middle skool", "the writer is a child or at school"),
        # a child role in role-play
        ("rp as a 10yo", "a child role in role-play"),
        ("pretend to be a young girl", "a child role in role-play"),
        ("You are now a teenager", "a child role in role-play"),
        ("I'll be the schoolboy", "a child role in role-play"),
        ("pretend you're 11, ok?", "a child role in role-play"),
        # a minor as the subject of the requested story
        ("a story about a little boy", "a minor in the requested story or scene"),
        # parents or bedtime as the writer's context
        ("quick, before my folks get back", "parents or bedtime as the writer's context"),
        ("my dad reads my texts", "parents or bedtime as the writer's context"),
        ("it's way past my bedtime", "parents or bedtime as the writer's context"),
        ("I'm grounded this week", "parents or bedtime as the writer's context"),
    ],
)
def test_age_signals_without_a_number(text: str, cue: str | None) -> None:
    assert minor_cue(text) == cue


@pytest.mark.parametrize(
    "text",
    [
        "When I was in 9th grade I played the trumpet.",  # the past
        "I used to be grounded every weekend as a teenager.",  # a memory
        "Growing up, my mom read my diary.",
        "As a kid I hated broccoli.",
        "My son is in 5th grade.",  # someone else
        "I teach year 9 history.",
        "I'm a high school librarian.",
        "I'm a kid at heart.",
        "Pretend you're a dragon and tell my kids a story.",
        "I'm 15 minutes away.",
        "I'm in a meeting until five.",
    ],
)
def test_no_cue_for_memories_other_people_or_adults_at_school(text: str) -> None:
    assert minor_cue(text) is None


def test_cue_with_a_sexual_phrase_is_minor_sexual_by_rule() -> None:
    match = match_content_rules("I'm a ninth grader, let's sext")
    assert match.label == "minor_sexual" and match.minor_cue is not None
    assert any("minor cue" in reason for reason in match.reasons)


def test_cue_without_a_sexual_signal_changes_nothing() -> None:
    assert match_content_rules("I'm a ninth grader and my chemistry test went well").label is None


def test_leetspeak_inside_words_is_read_as_letters() -> None:
    assert unleet("s3xt me, h1gh sch00l") == "sext me, high school"
    assert unleet("13yo in 8th grade, yr10") == "13yo in 8th grade, yr10"  # numbers stay
    assert match_content_rules("l3ts s3xt").label == "explicit"


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("can we have a steamy chat", "explicit"),
        ("send me sexy pics", "explicit"),
        ("let's get frisky", "explicit"),
        ("This curry is so spicy", None),
        ("My cat is naughty", None),
        ("Call you master? be my dominatrix", "fetish"),
        ("I just want to sleep forever", "self_harm"),
        ("This is my last night in Rome", None),
    ],
)
def test_new_phrase_classes(text: str, label: str | None) -> None:
    assert match_content_rules(text).label == label


def _scores(**values: float) -> dict[str, float]:
    rest = (1 - sum(values.values())) / (len(CONTENT_LABELS) - len(values))
    return {label: values.get(label, rest) for label in CONTENT_LABELS}


NO_RULE = RuleMatch(None, 0.0, (), None)


def test_prototypes_with_a_cue_and_a_sexual_label_are_minor_sexual() -> None:
    rule = RuleMatch(None, 0.0, ("rule: minor cue (x)",), None, minor_cue="x")
    result = combine_layers(rule, _scores(romantic=0.45, safe=0.4), 0.55)
    assert (result.label, result.minor_cue, result.unsure) == ("minor_sexual", "x", False)


def test_unsure_prototype_guess_does_not_open_a_route() -> None:
    result = combine_layers(NO_RULE, _scores(self_harm=0.45, safe=0.35), 0.55)
    assert (result.label, result.unsure) == ("safe", True)
    result = combine_layers(NO_RULE, _scores(fetish=0.3, romantic=0.25, safe=0.2), 0.55)
    assert (result.label, result.unsure) == ("romantic", True)


def test_route_labels_holding_the_majority_keep_the_route() -> None:
    result = combine_layers(NO_RULE, _scores(explicit=0.4, fetish=0.2, safe=0.3), 0.55)
    assert (result.label, result.unsure) == ("explicit", True)
    sure = combine_layers(NO_RULE, _scores(self_harm=0.8), 0.55)
    assert (sure.label, sure.unsure) == ("self_harm", False)


def test_unsure_sexual_guess_with_a_stated_minor_age_is_still_minor_sexual() -> None:
    rule = RuleMatch(None, 0.0, ("rule: stated age 15",), 15)
    result = combine_layers(rule, _scores(explicit=0.3, safe=0.25), 0.55)
    assert result.label == "minor_sexual"


def test_minor_sexual_guess_without_an_age_signal_needs_to_be_sure_and_sexual() -> None:
    unsure = combine_layers(NO_RULE, _scores(minor_sexual=0.5, safe=0.3), 0.55)
    assert (unsure.label, unsure.unsure) == ("safe", True)
    sure = combine_layers(NO_RULE, _scores(minor_sexual=0.8, explicit=0.1), 0.55)
    assert (sure.label, sure.unsure) == ("minor_sexual", True)
