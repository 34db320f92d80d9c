"""Prefix reuse between turns, on the pure prompt builder (no model, no database).

The engine reuses the KV of the longest message prefix two prompts share. Each case
builds turn N's prompt and turn N+1's the way the service does (turn N's message
and reply appended to the history) for every built-in persona and every state the
service produces, and checks that the shared prefix ends exactly where it should:
at turn N's volatile block (or panel instruction) when only that changed, at the
profile hint or the summary when one of those changed, and nowhere before.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import pytest

from inference.types import ChatMessage
from server.personas import Persona, load_personas
from server.turn.prompt import PromptParts, PromptState, panel_prompt, turn_prompt

# no personas.toml next to this file: the built-ins only
PERSONAS = load_personas(Path(__file__).parent)
EARLIER = [ChatMessage("user", "I keep bees."), ChatMessage("assistant", "How lovely!")]
PROFILE = "A beekeeper in Leeds."
SUMMARY = "They talked about honey."

# what the volatile block can hold: memories, a feeling, the age-gate note
VOLATILE = [
    {"memories": memories, "emotion": emotion, "age_gate": gate}
    for memories, emotion, gate in itertools.product(
        ((), ("Has three hives", "Likes heather honey")), ("neutral", "sadness"), (False, True)
    )
]
# the slow-changing parts as a conversation goes on
STABLE = [
    {"profile": None, "summary": None},
    {"profile": PROFILE, "summary": None},
    {"profile": None, "summary": SUMMARY},
    {"profile": PROFILE, "summary": SUMMARY},
]


def shared_prefix(a: list[ChatMessage], b: list[ChatMessage]) -> int:
    """How many leading messages ``a`` and ``b`` have in common (what the engine reuses)."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def next_state(
    state: PromptState, message: str, replies: list[str], **changes: object
) -> PromptState:
    """The state of the next turn: this turn's message and replies added to its history."""
    said = [ChatMessage("user", message), *(ChatMessage("assistant", r) for r in replies)]
    kept = changes.pop("history", state.history)  # a summary that grows replaces the oldest
    history = [*kept, *said]  # type: ignore[misc]
    return dataclasses.replace(state, history=history, **changes)  # type: ignore[arg-type]


def stable_end(parts: PromptParts) -> int:
    """Where a prompt's reusable part ends: its volatile block, else after its message
    (a panel's instruction, last, is not reused either)."""
    messages = parts.messages()
    if parts.context:
        return messages.index(ChatMessage("system", parts.context))
    return messages.index(ChatMessage("user", parts.message)) + 1


@pytest.mark.parametrize("persona", PERSONAS.values(), ids=list(PERSONAS))
@pytest.mark.parametrize("stable", STABLE)
@pytest.mark.parametrize("now", VOLATILE)
@pytest.mark.parametrize("then", VOLATILE)
def test_turn_n_is_reused_up_to_its_volatile_block(
    persona: Persona, stable: dict[str, str | None], now: dict[str, object], then: dict[str, object]
) -> None:
    state = PromptState(history=EARLIER, **stable, **now)  # type: ignore[arg-type]
    first = turn_prompt(persona.prompt, "They swarmed today.", state)
    following = next_state(state, first.message, ["Oh no!"], **then)
    second = turn_prompt(persona.prompt, "They are back.", following)
    one, two = first.messages(), second.messages()
    end = stable_end(first)
    assert shared_prefix(one, two) == end
    assert two[:end] == one[:end]
    if not first.context:  # all of turn N is reused, its message included
        assert one[end - 1] == ChatMessage("user", first.message) and end == len(one)
    else:  # never stored: the next turn has the message in its place
        assert two[end] == ChatMessage("user", first.message)
        assert ChatMessage("system", first.context) not in two[: len(two) - 2]


@pytest.mark.parametrize("persona", PERSONAS.values(), ids=list(PERSONAS))
@pytest.mark.parametrize("now", VOLATILE)
def test_reuse_ends_at_the_part_that_changed(persona: Persona, now: dict[str, object]) -> None:
    """A profile hint that appears, a summary that appears or grows: reuse ends there,
    and everything before it (the persona; the profile, when the summary changed) is kept."""
    message = "They swarmed today."
    # (before, what changed, index of the first changed message)
    cases: list[tuple[PromptState, dict[str, object], int]] = [
        (PromptState(history=EARLIER, **now), {"profile": PROFILE}, 1),  # type: ignore[arg-type]
        (PromptState(history=EARLIER, **now), {"summary": SUMMARY}, 1),  # type: ignore[arg-type]
        (
            PromptState(history=EARLIER, profile=PROFILE, **now),  # type: ignore[arg-type]
            {"summary": SUMMARY},
            2,
        ),
        (
            PromptState(history=EARLIER, profile=PROFILE, summary=SUMMARY, **now),  # type: ignore[arg-type]
            {"summary": SUMMARY + " Then about swarms.", "history": []},
            2,
        ),
        (
            PromptState(history=EARLIER, summary=SUMMARY, **now),  # type: ignore[arg-type]
            {"summary": SUMMARY + " Then about swarms."},
            1,
        ),
    ]
    for before, changes, changed_at in cases:
        first = turn_prompt(persona.prompt, message, before)
        following = next_state(before, message, ["Oh no!"], **changes)
        second = turn_prompt(persona.prompt, "They are back.", following)
        assert shared_prefix(first.messages(), second.messages()) == changed_at, changes
        assert second.messages()[0] == ChatMessage("system", persona.prompt)


def test_a_route_switch_reuses_nothing_of_the_conversation() -> None:
    """The persona is the first message: another persona's prompt (crisis support) starts
    a new prefix; coming back to the first persona finds its old one again."""
    state = PromptState(history=EARLIER, profile=PROFILE, summary=SUMMARY)
    calm = turn_prompt(PERSONAS["companion"].prompt, "Hello", state)
    crisis = turn_prompt(PERSONAS["crisis-support"].prompt, "Hello", state)
    assert shared_prefix(calm.messages(), crisis.messages()) == 0


@pytest.mark.parametrize("now", VOLATILE)
@pytest.mark.parametrize("then", VOLATILE[:2])
@pytest.mark.parametrize("stable", STABLE)
def test_a_panel_shares_all_but_its_instruction(
    stable: dict[str, str | None], now: dict[str, object], then: dict[str, object]
) -> None:
    """The panel's prompts differ only in the last instruction; the next panel turn reuses
    each of them up to its volatile block, or up to the instruction when there is none."""
    selectable = [p for p in PERSONAS.values() if p.selectable]
    state = PromptState(history=EARLIER, **stable, **now)  # type: ignore[arg-type]
    message = "What should I cook tonight?"
    prompts = [panel_prompt(message, state, p.name, p.prompt) for p in selectable]
    length = len(prompts[0].messages())
    for a, b in itertools.combinations(prompts, 2):
        assert shared_prefix(a.messages(), b.messages()) == length - 1
    replies = [f"{p.name} says soup." for p in selectable]
    following = next_state(state, message, replies, **then)
    for persona, prompt in zip(selectable, prompts, strict=True):
        after = panel_prompt("And tomorrow?", following, persona.name, persona.prompt)
        end = stable_end(prompt)
        assert shared_prefix(prompt.messages(), after.messages()) == end
        instruction = prompt.messages()[-1]
        assert instruction.content.startswith(f"Answer now as {persona.name}.")
        assert instruction not in after.messages()[:-1]  # never stored in the history


def test_the_volatile_block_holds_memories_feeling_and_the_age_gate_in_order() -> None:
    state = PromptState(memories=("Has three hives",), emotion="sadness", age_gate=True)
    context = turn_prompt("You are Mira.", "Hi", state).context.splitlines()
    assert context[0] == "Things you remember about this person: Has three hives"
    assert context[1] == "They seem to feel sadness right now."
    assert context[2].startswith("They asked for adult content")
    assert turn_prompt("You are Mira.", "Hi", PromptState()).context == ""
