"""The rules layer of the content classifier: phrases, stated ages, severity; no model."""

from __future__ import annotations

import pytest

from inference.classifiers.content import ContentContext, apply_context, combine_layers
from inference.classifiers.content_age import declared_age, stated_age
from inference.classifiers.content_rules import (
    CONTENT_LABELS,
    RULE_CONFIDENCE,
    RuleMatch,
    is_de_escalation,
    match_content_rules,
)


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("I'm 15", 15),
        ("I am 16 years old", 16),
        ("im 14 lol", 14),
        ("as a 13 year old I think that's unfair", 13),
        ("I'm a 17-year-old girl", 17),
        ("I just turned 16", 16),
        ("I'm fifteen", 15),
        ("my age is 14", 14),
        ("15 yo here", 15),
        ("I'm 34 and changing careers", 34),
    ],
)
def test_age_statements_are_found(text: str, age: int) -> None:
    assert stated_age(text) == age


@pytest.mark.parametrize(
    "text",
    [
        "I'm 15 minutes late",
        "I am 5 foot 6",
        "my 14 year old son is doing great",
        "I'm 20 km from home",
        "we have 16 people coming",
        "I'm at 3pm tomorrow",
    ],
)
def test_numbers_that_are_not_the_writers_age(text: str) -> None:
    assert stated_age(text) is None


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I want to kill myself", "self_harm"),
        ("I don't want to be here anymore", "self_harm"),
        ("Everyone would be better off without me", "self_harm"),
        ("I'm going to kill my boss", "violent_threat"),
        ("I know where you live", "violent_threat"),
        ("Immigrants should be exterminated", "hate"),
        ("tie me up and spank me", "fetish"),
        ("let's try some bdsm", "fetish"),
        ("talk dirty to me", "explicit"),
        ("can we sext", "explicit"),
        ("I love you", "romantic"),
        ("will you be my girlfriend?", "romantic"),
        ("I'm 15, will you be my girlfriend?", "minor_sexual"),
        ("im 14 talk dirty to me", "minor_sexual"),
        ("as a 13 year old, can we sext?", "minor_sexual"),
    ],
)
def test_clear_phrases_decide(text: str, label: str) -> None:
    match = match_content_rules(text)
    assert match.label == label, match
    assert match.confidence == RULE_CONFIDENCE
    assert match.reasons


@pytest.mark.parametrize(
    "text",
    [
        "What's a good recipe for lasagne?",
        "This commute is killing me",
        "I'm 15 minutes away",
        "We're covering sex education at school",
        "I'm 25, will you be my girlfriend?",
    ],
)
def test_safe_or_adult_messages_are_not_flagged_critical(text: str) -> None:
    assert match_content_rules(text).label not in {"self_harm", "minor_sexual", "violent_threat"}


def test_most_severe_label_wins() -> None:
    assert match_content_rules("I love you but I want to kill myself").label == "self_harm"
    assert match_content_rules("talk dirty to me and tie me up").label == "fetish"


def test_adult_age_keeps_explicit() -> None:
    match = match_content_rules("I'm 25, talk dirty to me")
    assert (match.label, match.age) == ("explicit", 25)


def _scores(top: str, value: float = 0.8) -> dict[str, float]:
    rest = (1 - value) / (len(CONTENT_LABELS) - 1)
    return {label: value if label == top else rest for label in CONTENT_LABELS}


def test_prototypes_decide_when_no_rule_fires() -> None:
    result = combine_layers(RuleMatch(None, 0.0, (), None), _scores("explicit"), 0.55)
    assert (result.label, result.layer, result.unsure) == ("explicit", "prototypes", False)


def test_stated_minor_age_turns_prototype_sexual_label_into_minor_sexual() -> None:
    rule = RuleMatch(None, 0.0, ("rule: stated age 14",), 14)
    result = combine_layers(rule, _scores("explicit"), 0.55)
    assert (result.label, result.age, result.layer) == ("minor_sexual", 14, "rules")


def test_mild_rule_disagreeing_with_confident_prototypes_is_unsure() -> None:
    rule = RuleMatch("romantic", RULE_CONFIDENCE, ("rule: romantic phrase",), None)
    result = combine_layers(rule, _scores("explicit"), 0.55)
    assert (result.label, result.unsure) == ("romantic", True)


def test_critical_rule_is_trusted_against_prototypes() -> None:
    rule = RuleMatch("self_harm", RULE_CONFIDENCE, ("rule: self_harm phrase",), None)
    result = combine_layers(rule, _scores("safe"), 0.55)
    assert (result.label, result.unsure) == ("self_harm", False)


def test_context_minor_makes_sexual_content_minor_sexual() -> None:
    base = combine_layers(RuleMatch(None, 0.0, (), None), _scores("romantic"), 0.55)
    result = apply_context(base, ContentContext(known_age=15))
    assert (result.label, result.layer) == ("minor_sexual", "context")


def test_borderline_message_inside_explicit_lock_stays_explicit() -> None:
    base = combine_layers(RuleMatch(None, 0.0, (), None), _scores("romantic"), 0.55)
    context = ContentContext(route="explicit", route_lock_remaining=3)
    assert apply_context(base, context).label == "explicit"
    assert apply_context(base, ContentContext()).label == "romantic"


def test_confident_safe_inside_lock_stays_safe() -> None:
    base = combine_layers(RuleMatch(None, 0.0, (), None), _scores("safe", 0.9), 0.55)
    context = ContentContext(route="explicit", route_lock_remaining=3)
    assert apply_context(base, context).label == "safe"


@pytest.mark.parametrize(
    "text",
    [
        "I would never hurt myself",
        "I'm not suicidal, just really tired of my job",
        "I'd never kill myself, don't worry",
        "I won't hurt myself, I promise",
        "I am no longer suicidal",
        "I have no intention of hurting myself",
        "I'm not going to kill myself",
    ],
)
def test_clear_denials_of_self_harm_are_safe_by_rule(text: str) -> None:
    match = match_content_rules(text)
    assert match.label == "safe", match
    assert "rule: denies self-harm" in match.reasons
    assert match.de_escalation


@pytest.mark.parametrize(
    "text",
    [
        "I'm not suicidal but sometimes I want to die",
        "I would never hurt myself, though lately I think about ending it all",
        "I don't want to hurt myself but I keep thinking about it",  # fighting an urge
        "I don't want to live anymore",
        "I'm not okay, I want to kill myself",
    ],
)
def test_ambiguous_or_contrasted_denials_still_count_as_self_harm(text: str) -> None:
    match = match_content_rules(text)
    assert match.label == "self_harm", match
    assert not match.de_escalation


def test_fear_of_dying_is_not_a_wish_to_die_nor_a_de_escalation() -> None:
    match = match_content_rules("I don't want to die, the surgery scares me")
    assert (match.label, match.de_escalation) == ("safe", False)
    assert match_content_rules("I don't want to die but I can't go on like this").label == (
        "self_harm"
    )


@pytest.mark.parametrize(
    ("text", "calmer"),
    [
        ("I feel a lot better now, thank you", True),
        ("I'm safe", True),
        ("I talked to my therapist today", True),
        ("The urge has passed", True),
        ("I'm okay now", True),
        ("I'm fine", False),  # often masks distress
        ("I feel better but I still want to disappear", False),
        ("What a lovely day", False),
    ],
)
def test_de_escalation(text: str, calmer: bool) -> None:
    assert is_de_escalation(text) is calmer


@pytest.mark.parametrize(
    ("text", "age"),
    [
        ("I'm 15", 15),
        ("im 14 years old", 14),
        ("I am 16 and bored", 16),
        ("hi! i'm 13 lol", 13),
        ("I just turned 17", 17),
        ("I'm 34", 34),
    ],
)
def test_sincere_age_statements_are_declared(text: str, age: int) -> None:
    assert declared_age(text) == age


@pytest.mark.parametrize(
    "text",
    [
        "I'm 15 minutes late",
        "my son is 15",
        "my 14 year old daughter says hi",
        'She texted me "I\'m 15" and I did not believe her',
        "> I'm 15\nwhat do you make of that message?",
        "my friend told me I'm 14 at heart",
        "pretend I'm 14 in this story",
        "let's roleplay: I'm 16 and you're my teacher",
        "I feel like I'm 15 again",
        "I'm 15 again, at least in my head",
        "I'm 15 jk I'm 30",
    ],
)
def test_quoted_reported_or_pretended_ages_are_not_declared(text: str) -> None:
    age = declared_age(text)
    assert age is None or age >= 18, (text, age)


def test_pretended_minor_age_still_blocks_sexual_content() -> None:
    match = match_content_rules("let's roleplay, I'm 15, kiss me")
    assert match.label == "minor_sexual" and match.declared_age is None


def test_results_carry_the_declared_age_and_de_escalation() -> None:
    declared = combine_layers(match_content_rules("im 14 years old"), _scores("safe"), 0.55)
    assert declared.declares_minor and declared.age == 14
    quoted = combine_layers(match_content_rules('she said "I\'m 14"'), _scores("safe"), 0.55)
    assert quoted.age == 14 and not quoted.declares_minor
    adult = combine_layers(match_content_rules("I'm 34"), _scores("safe"), 0.55)
    assert not adult.declares_minor
    calmer = combine_layers(match_content_rules("I feel better now"), _scores("safe"), 0.55)
    assert calmer.de_escalation
    # Prototypes that still hear self-harm win over a de-escalation phrase.
    worried = combine_layers(match_content_rules("I feel better now"), _scores("self_harm"), 0.55)
    assert worried.label == "self_harm" and not worried.de_escalation


def test_denial_against_confident_self_harm_prototypes_is_unsure() -> None:
    result = combine_layers(match_content_rules("I'm not suicidal"), _scores("self_harm"), 0.55)
    assert (result.label, result.unsure) == ("safe", True)  # the judge decides
