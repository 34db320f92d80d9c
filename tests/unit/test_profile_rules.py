"""Profile signals, smoothing and the prompt hint, without a database or a model."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from memory.errors import UnusableAnswer
from memory.profile import (
    Goal,
    GoalNote,
    Observation,
    Profile,
    ProfileConfig,
    TraitEstimate,
    confidence,
    render_hint,
    smooth,
)
from memory.profile_rules import goal_statements, progress_kind, trait_signals
from memory.profile_update import parse_answer

NOW = datetime(2025, 6, 1, tzinfo=UTC)
CONFIG = ProfileConfig()


@pytest.mark.parametrize(
    ("text", "trait", "value"),
    [
        ("I'm such an introvert, parties drain me", "extraversion", 0.0),
        ("I love meeting new people!", "extraversion", 1.0),
        ("I can't stop worrying about my exams", "neuroticism", 1.0),
        ("Honestly that doesn't bother me", "neuroticism", 0.0),
        ("I made a schedule for the whole week", "conscientiousness", 1.0),
        ("I procrastinated all day again", "conscientiousness", 0.0),
        ("I love trying new recipes", "openness", 1.0),
        ("I prefer my routine, thanks", "openness", 0.0),
        ("I always try to see their side", "agreeableness", 1.0),
        ("people are idiots", "agreeableness", 0.0),
    ],
)
def test_trait_cues(text: str, trait: str, value: float) -> None:
    signals = {s.trait: s.value for s in trait_signals(text)}
    assert signals == {trait: value}


@pytest.mark.parametrize(
    "text", ["I'm not anxious at all", "What's the weather tomorrow?", "my friend is an introvert"]
)
def test_no_trait_cue(text: str) -> None:
    assert trait_signals(text) == []


@pytest.mark.parametrize(
    ("text", "goals"),
    [
        ("I want to run a 10k by the end of summer", ["run a 10k by the end of summer"]),
        ("My goal this year is to learn Spanish.", ["learn Spanish"]),
        ("I'm training for a marathon but my knee hurts", ["training for a marathon"]),
        ("I'd love to visit Japan because of the food", ["visit Japan"]),
        ("I want to eat pizza", []),
        ("I don't want to run anymore", []),
        ("I'm going to the shop", []),
    ],
)
def test_goal_statements(text: str, goals: list[str]) -> None:
    assert goal_statements(text) == goals


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("I ran 5 km this morning!", "progress"),
        ("I did it, I finished the 10k!", "achieved"),
        ("I gave up on Spanish, too hard", "abandoned"),
        ("Do you like cats?", None),
    ],
)
def test_progress_kind(text: str, kind: str | None) -> None:
    assert progress_kind(text) == kind


def obs(value: float, weight: float = 0.5) -> Observation:
    return Observation("extraversion", value, weight, "rules", 1, "cue")


def test_first_observations_average_then_the_window_caps() -> None:
    score, evidence = smooth(0.5, 0.0, None, obs(0.0), NOW, CONFIG)
    assert (score, evidence) == (0.0, 0.5)  # nothing before it: the observation itself
    score, evidence = smooth(score, evidence, NOW, obs(1.0), NOW, CONFIG)
    assert score == pytest.approx(0.5)  # a plain mean of the two
    settled, _ = smooth(0.2, 100.0, NOW, obs(1.0), NOW, CONFIG)
    # With a lot of evidence one message moves the score by weight / (memory + weight).
    assert settled == pytest.approx(0.2 + 0.8 * 0.5 / 20.5)


def test_evidence_fades_without_news_and_confidence_follows() -> None:
    _, fresh = smooth(0.5, 8.0, NOW, obs(0.0), NOW, CONFIG)
    later = NOW + timedelta(days=CONFIG.half_life_days)
    _, faded = smooth(0.5, 8.0, NOW, obs(0.0), later, CONFIG)
    assert fresh == pytest.approx(8.5) and faded == pytest.approx(4.5)
    assert confidence(0.0, CONFIG) == 0.0
    assert confidence(CONFIG.confidence_k, CONFIG) == pytest.approx(0.5)
    assert confidence(fresh, CONFIG) > confidence(faded, CONFIG)


def estimate(trait: str, score: float, evidence: float) -> TraitEstimate:
    return TraitEstimate(trait, score, evidence, 10, confidence(evidence, CONFIG), NOW)


def goal(description: str, status: str = "active", notes: list[str] | None = None) -> Goal:
    written = [GoalNote(n, None, 1, NOW) for n in notes or []]
    return Goal(1, description, status, "rules", [1], NOW, NOW, written)


def test_hint_names_only_confident_clear_leanings_and_goals() -> None:
    profile = Profile(
        traits=[
            estimate("extraversion", 0.1, 8.0),  # clear and confident
            estimate("neuroticism", 0.9, 1.0),  # clear, too little evidence
            estimate("openness", 0.6, 20.0),  # confident, barely leaning
        ],
        goals=[
            goal("run a 10k", notes=["ran 5 km on Sunday"]),
            goal("learn Spanish", "abandoned"),
            goal("pass the driving test", "achieved"),
        ],
    )
    hint = render_hint(profile, NOW, CONFIG)
    assert hint == (
        "They come across as rather introverted, recharges alone."
        " Their goals: run a 10k (latest: ran 5 km on Sunday)."
        " Recently achieved: pass the driving test."
    )
    assert render_hint(Profile([], []), NOW, CONFIG) is None


def test_model_answer_is_validated() -> None:
    answer = {
        "traits": [{"trait": "openness", "level": 0.8, "evidence": "I love art"}],
        "goals": [{"goal": "learn piano", "status": "active", "note": None, "known": None}],
    }
    parsed = parse_answer(json.dumps(answer))
    assert parsed.traits[0].trait == "openness" and parsed.goals[0].goal == "learn piano"
    for raw in (
        "",
        "{",
        '{"traits": []}',
        '{"traits": [{"trait": "luck", "level": 1, "evidence": "xx"}], "goals": []}',
    ):
        with pytest.raises(UnusableAnswer):
            parse_answer(raw)
