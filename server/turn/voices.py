"""Who answers a turn, on which engine, with which prompt; and the ``meta`` that says so.

On the normal route the conversation's persona answers a single turn (the small
model takes short small talk, when there is one) and the chosen personas answer a
panel; on any other route (crisis, explicit, blocked) only the route's persona
answers: safety decides before the panel does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inference.engine import Engine
from server.complexity import message_tier
from server.personas import Persona
from server.turn.errors import UnknownPersona
from server.turn.events import TurnMeta
from server.turn.gather import TurnParts
from server.turn.prompt import PromptParts, PromptState, panel_prompt, turn_prompt

PANEL_MAX_PERSONAS = 4


@dataclass(frozen=True, slots=True)
class Voice:
    """One persona that answers, on which engine, with which prompt."""

    persona: Persona
    engine: Engine
    prompt: PromptParts  # before fitting to the engine's context
    tier: str | None = None  # a single turn's complexity tier


class Casting:
    """Chooses the voices of turns; one per process."""

    def __init__(self, personas: dict[str, Persona], small_engine: Engine | None = None) -> None:
        self._personas = personas
        self._small_engine = small_engine

    def persona(self, persona_id: str) -> Persona:
        """The persona, or the default one for an id that no longer exists."""
        return self._personas.get(persona_id) or self._personas["companion"]

    def panel_personas(self, persona_ids: Sequence[str]) -> list[Persona]:
        """The personas of a panel request; `UnknownPersona` for bad ones."""
        count = len(persona_ids)
        if not 1 <= count <= PANEL_MAX_PERSONAS or len(set(persona_ids)) != count:
            raise UnknownPersona(f"give 1 to {PANEL_MAX_PERSONAS} different personas")
        chosen = [self._personas.get(p) for p in persona_ids]
        if any(p is None or not p.selectable for p in chosen):
            raise UnknownPersona(f"unknown persona among {list(persona_ids)}")
        return [p for p in chosen if p is not None]

    def panel(
        self, text: str, persona_ids: Sequence[str], parts: TurnParts, engine: Engine
    ) -> list[Voice]:
        """A panel's voices: prompts that differ only in their last instruction."""
        decision, state = parts.decision, prompt_state(parts)
        chosen = list(persona_ids) if decision.route == "normal" else [decision.persona]
        return [
            Voice(p, engine, panel_prompt(text, state, p.name, p.prompt))
            for p in map(self.persona, chosen)
        ]

    def single(self, text: str, persona_id: str, parts: TurnParts, engine: Engine) -> Voice:
        """A single turn's voice, on the engine of its tier."""
        decision = parts.decision
        persona = self.persona(persona_id if decision.route == "normal" else decision.persona)
        tier = message_tier(text, decision.route, parts.content.label)
        if tier == "small" and self._small_engine is not None:
            engine = self._small_engine
        else:
            tier = "default"
        return Voice(persona, engine, turn_prompt(persona.prompt, text, prompt_state(parts)), tier)


def prompt_state(parts: TurnParts) -> PromptState:
    """What the prompt builder needs of the gathered parts."""
    return PromptState(
        profile=parts.profile,
        summary=parts.summary,
        history=parts.history,
        memories=[m.content for m in parts.memories],
        emotion=parts.emotion.label,
        age_gate=parts.decision.needs_verification,
    )


def turn_meta(parts: TurnParts, voices: list[Voice], panel: bool) -> TurnMeta:
    """The first event: who answers and what the message was understood as."""
    decision, first = parts.decision, voices[0]
    return TurnMeta(
        route=decision.route,
        persona=None if panel else first.persona.id,
        personas=[v.persona.id for v in voices] if panel else None,
        model=first.engine.model_id,  # the model that answers
        emotion=parts.emotion.label,
        emotion_confidence=round(parts.emotion.confidence, 3),
        content_label=parts.content.label,
        needs_verification=decision.needs_verification,
        memories_used=[m.id for m in parts.memories],
        tier=first.tier,
    )
