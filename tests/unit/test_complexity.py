"""Which messages are small talk for the small model."""

from __future__ import annotations

import pytest

from server.complexity import message_tier


@pytest.mark.parametrize("text", ["hi!", "Hey there", "good morning :)", "thanks!", "ok", "lol"])
def test_short_safe_small_talk_is_small(text: str) -> None:
    assert message_tier(text, "normal", "safe") == "small"


@pytest.mark.parametrize(
    "text",
    [
        "hi, can you help me plan my week and think through the job offer?",
        "I had a rough day at work",
        "What is the capital of Peru?",
        "history of the okapi",  # "ok" inside a word is not "ok"
    ],
)
def test_anything_else_is_default(text: str) -> None:
    assert message_tier(text, "normal", "safe") == "default"


def test_safety_routes_and_unsure_labels_never_go_small() -> None:
    assert message_tier("hi", "crisis", "safe") == "default"
    assert message_tier("hi", "normal", "romantic") == "default"
    assert message_tier("hey", "explicit", "explicit") == "default"
