"""Updating a user's personality estimate and goals from a window of turns (a background job).

Cheap signals first, on every job: `memory.profile_rules` over each user
message gives trait observations (weight ``rule_weight``), stated goals and
progress reports. Then, when the job asks for it (every few turns), the chat
model reads the window and answers JSON constrained to `PROFILE_SCHEMA`:
trait judgements with a quote from the user as evidence, and goals with a
status, an optional progress note and the number of the known goal they
concern. Its answer is validated here like fact extraction's: an engine
error or malformed answer leaves the rule updates in place and reports
``unusable``; a trait judgement whose evidence shares no content word with
the user's messages is dropped (the same cheap hallucination guard).

Goals are matched by MiniLM similarity: a stated goal within
``same_goal_similarity`` of a stored one is the same goal (restating an
abandoned or achieved goal makes it active again); a progress report goes
to the nearest active goal within ``progress_similarity``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from memory.episodes import Turn
from memory.errors import UnusableAnswer
from memory.extraction import is_grounded
from memory.model_answers import ask_json, decode_answer
from memory.profile import Goal, Observation, ProfileStore
from memory.profile_rules import (
    GOAL_STATUSES,
    TRAITS,
    GoalStatus,
    ProgressKind,
    Trait,
    goal_statements,
    progress_kind,
    trait_signals,
)
from memory.protocols import Embedder, JSONGenerator

log = logging.getLogger(__name__)

ModelStatus = Literal["skipped", "applied", "unusable"]

PROFILE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "traits": {
            "type": "array",
            "maxItems": 5,
            "items": {
                "type": "object",
                "properties": {
                    "trait": {"type": "string", "enum": list(TRAITS)},
                    "level": {"type": "number", "minimum": 0, "maximum": 1},
                    "evidence": {"type": "string", "minLength": 3, "maxLength": 200},
                },
                "required": ["trait", "level", "evidence"],
            },
        },
        "goals": {
            "type": "array",
            "maxItems": 4,
            "items": {
                "type": "object",
                "properties": {
                    "goal": {"type": "string", "minLength": 3, "maxLength": 150},
                    "status": {"type": "string", "enum": list(GOAL_STATUSES)},
                    "note": {"type": ["string", "null"], "maxLength": 200},
                    "known": {"type": ["integer", "null"]},
                },
                "required": ["goal", "status", "note", "known"],
            },
        },
    },
    "required": ["traits", "goals"],
}

_SYSTEM = (
    "You read a conversation and note what the USER's own words show. traits: Big Five "
    "traits the user clearly shows (openness, conscientiousness, extraversion, "
    "agreeableness, neuroticism), level 0 = very low, 1 = very high, evidence = the user's "
    "words; none when unclear. goals: goals the user states or reports on; status active, "
    "achieved or abandoned; note = a short progress note or null; known = the number of the "
    'known goal it concerns, else null. Answer only JSON: {"traits": [...], "goals": [...]}.'
)


@dataclass(frozen=True, slots=True)
class UpdateConfig:
    same_goal_similarity: float = 0.8
    progress_similarity: float = 0.38  # "I ran 5 km this morning" vs "run a 10k": 0.40
    max_known_goals: int = 8


class ModelTrait(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trait: Trait
    level: float
    evidence: str


class ModelGoal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    goal: str
    status: GoalStatus
    note: str | None = None
    known: int | None = None


class ModelAnswer(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    traits: list[ModelTrait]
    goals: list[ModelGoal]


class ProfileUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """What one job changed, as the job returns and logs it."""

    observations: int = 0  # new trait observations folded in
    goals_added: list[int] = msgspec.field(default_factory=list)
    notes_added: int = 0
    model: ModelStatus = "skipped"
    reason: str | None = None
    dropped: list[str] = msgspec.field(default_factory=list)  # ungrounded model evidence


@dataclass
class _Tally:
    observations: int = 0
    notes: int = 0
    goals: list[int] = field(default_factory=list)


class ProfileUpdater:
    """Runs one profile update over a window of turns (module docstring)."""

    def __init__(
        self,
        store: ProfileStore,
        embedder: Embedder,
        generator: JSONGenerator | None,
        config: UpdateConfig | None = None,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._generator = generator
        self.config = config or UpdateConfig()

    async def update(
        self, user_id: uuid.UUID, turns: Sequence[Turn], *, use_model: bool = False
    ) -> ProfileUpdate:
        """Rule signals from every user message, then the model's reading if asked."""
        tally = _Tally()
        mine = [t for t in turns if t.speaker == "user"]
        for turn in mine:
            await self._apply_rules(user_id, turn, tally)
        if not use_model or self._generator is None or not mine:
            return _result(tally)
        try:
            answer = await self._ask(self._generator, user_id, turns)
        except UnusableAnswer as exc:
            log.warning("profile update unusable for user %s: %s", user_id, exc)
            return _result(tally, model="unusable", reason=str(exc))
        dropped = await self._apply_model(user_id, mine, answer, tally)
        return _result(tally, model="applied", dropped=dropped)

    async def _apply_rules(self, user_id: uuid.UUID, turn: Turn, tally: _Tally) -> None:
        weight = self._store.config.rule_weight
        observations = [
            Observation(s.trait, s.value, weight, "rules", turn.message_id, s.cue)
            for s in trait_signals(turn.text)
        ]
        tally.observations += await self._store.observe(user_id, observations)
        stated = goal_statements(turn.text)
        for goal in stated:
            await self._goal(user_id, goal, "active", None, "rules", turn.message_id, tally)
        kind = progress_kind(turn.text)
        if kind is not None and not stated:
            await self._progress(user_id, turn, kind, tally)

    async def _goal(
        self,
        user_id: uuid.UUID,
        description: str,
        status: GoalStatus,
        note: str | None,
        source: Literal["rules", "model"],
        message_id: int,
        tally: _Tally,
    ) -> None:
        """A stated goal: the same as a stored one (maybe re-activated), or a new one."""
        vector = await self._embed(description)
        same = await self._store.nearest_goal(user_id, vector)
        if same is not None and same.similarity >= self.config.same_goal_similarity:
            changed = status if status != same.status else None
            if changed is not None or note:
                text = note or f"status: {status}"
                tally.notes += await self._store.add_note(same.id, text, changed, message_id)
            return
        if status != "active":
            return  # a goal first heard of as finished or dropped is not worth tracking
        goal_id = await self._store.add_goal(user_id, description, vector, source, [message_id])
        if goal_id is None:
            return  # the message was edited away meanwhile
        tally.goals.append(goal_id)
        if note:
            tally.notes += await self._store.add_note(goal_id, note, None, message_id)

    async def _progress(
        self, user_id: uuid.UUID, turn: Turn, kind: ProgressKind, tally: _Tally
    ) -> None:
        near = await self._store.nearest_goal(user_id, await self._embed(turn.text), ("active",))
        if near is None or near.similarity < self.config.progress_similarity:
            return
        status: GoalStatus | None = None if kind == "progress" else kind
        note = " ".join(turn.text.split())[:200]
        tally.notes += await self._store.add_note(near.id, note, status, turn.message_id)

    async def _ask(
        self, generator: JSONGenerator, user_id: uuid.UUID, turns: Sequence[Turn]
    ) -> ModelAnswer:
        known = [g for g in await self._store.goals(user_id) if g.status == "active"]
        listed = "\n".join(
            f"{i + 1}. {g.description}" for i, g in enumerate(known[: self.config.max_known_goals])
        )
        text = "\n".join(f"{t.speaker}: {t.text}" for t in turns)
        question = f"Known goals:\n{listed or '(none)'}\n\nConversation:\n{text}"
        raw = await ask_json(generator, _SYSTEM, question, PROFILE_SCHEMA, user_id)
        return parse_answer(raw)

    async def _apply_model(
        self, user_id: uuid.UUID, mine: Sequence[Turn], answer: ModelAnswer, tally: _Tally
    ) -> list[str]:
        said = "\n".join(t.text for t in mine)
        last = mine[-1].message_id
        weight = self._store.config.model_weight
        grounded = {t.trait: t for t in answer.traits if is_grounded(t.evidence, said)}
        dropped = [t.evidence for t in answer.traits if grounded.get(t.trait) is not t]
        observations = [
            Observation(t.trait, t.level, weight, "model", last, t.evidence)
            for t in grounded.values()
        ]
        tally.observations += await self._store.observe(user_id, observations)
        known = [g for g in await self._store.goals(user_id) if g.status == "active"]
        for goal in answer.goals:
            if not is_grounded(goal.goal, said):
                dropped.append(goal.goal)
                continue
            named = _known(known, goal.known, self.config.max_known_goals)
            if named is not None:
                changed = goal.status if goal.status != named.status else None
                note = goal.note or f"status: {goal.status}"
                if changed is not None or goal.note:
                    tally.notes += await self._store.add_note(named.id, note, changed, last)
                continue
            await self._goal(user_id, goal.goal, goal.status, goal.note, "model", last, tally)
        return dropped

    async def _embed(self, text: str) -> npt.NDArray[np.float32]:
        return np.asarray((await self._embedder.embed([text]))[0], dtype=np.float32)


def _known(known: Sequence[Goal], number: int | None, limit: int) -> Goal | None:
    if number is None or not 1 <= number <= min(len(known), limit):
        return None
    return known[number - 1]


def parse_answer(raw: str) -> ModelAnswer:
    """Decode and validate the model's answer, or raise `UnusableAnswer` saying why."""
    answer = decode_answer(raw, ModelAnswer)
    if any(not 0.0 <= t.level <= 1.0 for t in answer.traits):
        raise UnusableAnswer("schema mismatch: level outside [0, 1]")
    goals = [g for g in answer.goals if len(" ".join(g.goal.split())) >= 3]
    return ModelAnswer(answer.traits[:5], goals[:4])


def _result(
    tally: _Tally,
    model: ModelStatus = "skipped",
    reason: str | None = None,
    dropped: list[str] | None = None,
) -> ProfileUpdate:
    return ProfileUpdate(
        observations=tally.observations,
        goals_added=list(tally.goals),
        notes_added=tally.notes,
        model=model,
        reason=reason,
        dropped=dropped or [],
    )
