"""The turn prompt's order, on its own: the project's central cache idea (each turn's prompt
extends the last one's) used to be tested only end to end through HTTP."""

from __future__ import annotations

import dataclasses

from inference.types import ChatMessage
from server.turn.fit import TEMPLATE_TOKENS, TEMPLATE_TOKENS_PER_MESSAGE, upper_bound
from server.turn.prompt import PromptParts

HISTORY = [ChatMessage("user", "I keep bees."), ChatMessage("assistant", "How lovely!")]


def full() -> PromptParts:
    return PromptParts(
        persona="You are Mira.",
        message="They swarmed today.",
        profile="A beekeeper in Leeds.",
        summary="They talked about honey.",
        history=HISTORY,
        context="They seem to feel surprise right now.",
        voice="Answer now as Sage.",
    )


def test_the_most_stable_parts_come_first() -> None:
    messages = full().messages()
    assert [m.content for m in messages] == [
        "You are Mira.",
        "About this person: A beekeeper in Leeds.",
        "Earlier in this conversation: They talked about honey.",
        "I keep bees.",
        "How lovely!",
        "They seem to feel surprise right now.",
        "They swarmed today.",
        "Answer now as Sage.",
    ]
    assert [m.role for m in messages] == [
        *["system"] * 3,
        "user",
        "assistant",
        *["system", "user"],
        "system",
    ]


def test_the_next_turn_extends_this_one_up_to_the_volatile_block() -> None:
    """Turn two's prompt starts with turn one's, except the volatile context (rebuilt each
    turn, never stored): the engine reuses everything before it."""
    first = dataclasses.replace(full(), history=[], voice=None)
    said = [ChatMessage("user", first.message), ChatMessage("assistant", "Oh no!")]
    second = dataclasses.replace(first, history=said, message="They are back.")
    one, two = first.messages(), second.messages()
    volatile = one.index(ChatMessage("system", first.context))
    assert two[:volatile] == one[:volatile]
    assert two[volatile] == ChatMessage("user", first.message)


def test_empty_parts_leave_no_message() -> None:
    bare = PromptParts(persona="You are Mira.", message="Hi")
    assert bare.messages() == [ChatMessage("system", "You are Mira."), ChatMessage("user", "Hi")]


def test_trimming_drops_the_oldest_history_only() -> None:
    trimmed = full().trimmed(1)
    assert list(trimmed.history) == HISTORY[1:]
    assert trimmed.summary == full().summary and trimmed.message == full().message


def test_the_bound_counts_bytes_not_characters() -> None:
    ascii_bound = upper_bound([ChatMessage("user", "a" * 30)])
    cjk_bound = upper_bound([ChatMessage("user", "漢" * 30)])  # three UTF-8 bytes each
    assert ascii_bound == 30 + TEMPLATE_TOKENS_PER_MESSAGE + TEMPLATE_TOKENS
    assert cjk_bound - ascii_bound == 60
