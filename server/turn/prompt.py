"""A turn's prompt, built from what the turn gathered: pure (no engine, no database).

Order. The most stable parts come first, so each turn's prompt extends the
previous one and the engine reuses its KV: the persona (public: shared by every
user of the persona), the profile hint (changes rarely), the summary of older
turns, the history, then the volatile context (memories, feeling, an age-gate
note: rebuilt each turn and never kept in the history), the new message, and
last the panel's instruction naming who answers. The next turn's cache reuse
ends where this turn's volatile block began.

A panel's prompts share everything but that last instruction (its persona slot
holds `PANEL_PREAMBLE`), so the engine computes the conversation once for all of
its personas. Fitting the prompt to a model's context is `server.turn.fit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from inference.types import ChatMessage

PANEL_PREAMBLE = (
    "Several companions with different voices share this conversation with the user."
    " Each message is answered by the companion named in the last instruction, in that"
    " companion's own voice, without speaking for the others."
)
AGE_GATE_NOTE = (
    "They asked for adult content, which needs age verification first: say so kindly"
    " and keep the conversation friendly."
)


@dataclass(frozen=True, slots=True)
class PromptParts:
    """What a turn's prompt is made of; `messages` puts it in order."""

    persona: str
    message: str
    profile: str | None = None
    summary: str | None = None
    history: Sequence[ChatMessage] = ()
    context: str = ""
    voice: str | None = None  # the panel's last instruction: who answers now

    def messages(self) -> list[ChatMessage]:
        messages = [ChatMessage("system", self.persona)]
        if self.profile:
            messages.append(ChatMessage("system", f"About this person: {self.profile}"))
        if self.summary:
            messages.append(ChatMessage("system", f"Earlier in this conversation: {self.summary}"))
        messages.extend(self.history)
        if self.context:
            messages.append(ChatMessage("system", self.context))
        messages.append(ChatMessage("user", self.message))
        if self.voice:
            messages.append(ChatMessage("system", self.voice))
        return messages

    def trimmed(self, history_dropped: int) -> PromptParts:
        """Without the oldest ``history_dropped`` history messages."""
        return dataclasses.replace(self, history=self.history[history_dropped:])


@dataclass(frozen=True, slots=True)
class PromptState:
    """What the service knows of the user and the conversation when a turn starts."""

    profile: str | None = None  # the profile hint (`memory.profile`)
    summary: str | None = None  # the rolling summary of older turns
    history: Sequence[ChatMessage] = ()  # the turns since the summary
    memories: Sequence[str] = ()  # retrieved long-term memories, best first
    emotion: str = "neutral"  # how the message reads
    age_gate: bool = False  # adult content asked for before age verification


def turn_prompt(persona_prompt: str, message: str, state: PromptState) -> PromptParts:
    """A single turn's prompt: ``persona_prompt`` answers ``message``."""
    return PromptParts(
        persona=persona_prompt,
        message=message,
        profile=state.profile,
        summary=state.summary,
        history=state.history,
        context=volatile_context(state.memories, state.emotion, state.age_gate),
    )


def panel_prompt(message: str, state: PromptState, name: str, persona_prompt: str) -> PromptParts:
    """One panel persona's prompt: the shared conversation under `PANEL_PREAMBLE`, then
    the instruction naming who answers now (the only part the panel's prompts differ in)."""
    shared = turn_prompt(PANEL_PREAMBLE, message, state)
    return dataclasses.replace(shared, voice=f"Answer now as {name}. {persona_prompt}")


def volatile_context(memories: Sequence[str], emotion: str, age_gate: bool) -> str:
    """The block rebuilt every turn: retrieved memories, the feeling, the age-gate note."""
    lines = []
    if memories:
        lines.append(f"Things you remember about this person: {'; '.join(memories)}")
    if emotion != "neutral":
        lines.append(f"They seem to feel {emotion} right now.")
    if age_gate:
        lines.append(AGE_GATE_NOTE)
    return "\n".join(lines)
