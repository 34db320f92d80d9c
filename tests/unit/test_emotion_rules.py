"""The rules layer of the emotion classifier: clear cases decide, anything hedged defers."""

from __future__ import annotations

import pytest

from inference.classifiers.dataset import score
from inference.classifiers.lexicon import RULE_CONFIDENCE, match_rules


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I'm so happy today!", "joy"),
        ("im really excited about the trip", "joy"),
        ("Thank you so much for this", "joy"),
        ("I hate you.", "anger"),
        ("I am furious with my landlord", "anger"),
        ("I'm terrified of the surgery tomorrow", "fear"),
        ("That movie scares me", "fear"),
        ("I'm so sad since she left", "sadness"),
        ("I miss you every day", "sadness"),
        ("That's disgusting", "disgust"),
        ("ew", "disgust"),
        ("I'm shocked, honestly", "surprise"),
        ("Wow!!", "surprise"),
        ("I can't believe it, she said yes", "surprise"),
        ("this song 😍", "joy"),
        ("my dog died 😭", "sadness"),
    ],
)
def test_clear_statements_decide(text: str, label: str) -> None:
    hit = match_rules(text)
    assert hit is not None and hit.label == label
    assert hit.confidence == RULE_CONFIDENCE


@pytest.mark.parametrize(
    "text",
    [
        "I'm not happy with this",
        "I don't hate you",
        "Are you scared?",
        "If I was sad I'd tell you",
        "I'm happy for you but I'm scared for me",  # two emotions: not a rule case
        "The meeting is at 3pm",
        "happy birthday to my brother",  # no first-person feeling: the head decides
        "",
    ],
)
def test_hedged_or_mixed_text_defers(text: str) -> None:
    assert match_rules(text) is None


def test_multi_label_scoring_counts_any_gold_label() -> None:
    # Row 0 is joy+surprise: predicting surprise is right; row 1 is anger, predicted joy.
    result = score([(3, 6), (0,)], [6, 3])
    assert result.accuracy == 0.5
    assert result.per_class["surprise"] == 1.0
    assert result.per_class["joy"] == 0.0 and result.per_class["anger"] == 0.0
