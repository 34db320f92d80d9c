"""A user's personality estimate and goals in PostgreSQL, and the prompt hint built from them.

Big Five estimates, one per trait: ``score`` in [0, 1] (0.5 leans nowhere)
and ``evidence``, the weight of the observations behind it. An observation
(``value`` in [0, 1], ``weight``: small for a rule cue, larger for the
model's judgement) moves the score by ``weight / (n + weight)``, where ``n``
is the evidence so far capped at ``memory``: the first observations average
plainly, later ones form an exponential moving average, so an old
impression fades as new evidence comes in and no single message swings a
settled estimate. Evidence also halves every ``half_life_days`` without
news. ``confidence = evidence / (evidence + confidence_k)``: 0 with nothing
seen, 0.5 after ``confidence_k`` units.

Every observation is stored with its message id and cue (the export shows
why the companion thinks so); a unique key on (user, message, trait, source)
makes a retried job count nothing twice.

Goals: a description, a status (active, achieved, abandoned), the MiniLM
embedding (to find the same goal restated or a message reporting on it),
and progress notes, one per message at most.

`profile_hint` turns the profile into one short line for the prompt, with
coarse wording (a trait is named only when it is clearly leaning and
confident), so it changes rarely and keeps the prompt prefix reusable.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from memory.profile_rules import TRAITS, GoalStatus, Trait

Source = Literal["rules", "model"]


@dataclass(frozen=True, slots=True)
class ProfileConfig:
    """Smoothing of the trait estimates and what the prompt hint mentions."""

    memory: float = 20.0  # evidence cap in the update: the EMA's effective window
    half_life_days: float = 180.0
    confidence_k: float = 4.0
    rule_weight: float = 0.5
    model_weight: float = 1.0
    hint_confidence: float = 0.5  # a trait is named in the hint from this confidence
    hint_lean: float = 0.2  # ... and this far from 0.5
    hint_goals: int = 3
    achieved_shown_days: int = 30


class TraitEstimate(msgspec.Struct, frozen=True):
    trait: str
    score: float
    evidence: float
    observations: int
    confidence: float
    updated_at: datetime


class Observation(msgspec.Struct, frozen=True):
    """One signal about one trait from one message."""

    trait: Trait
    value: float
    weight: float
    source: Source
    message_id: int
    cue: str


class GoalNote(msgspec.Struct, frozen=True):
    note: str
    status: str | None
    message_id: int
    created_at: datetime


class Goal(msgspec.Struct, frozen=True):
    id: int
    description: str
    status: str
    source: str
    source_message_ids: list[int]
    created_at: datetime
    updated_at: datetime
    notes: list[GoalNote] = msgspec.field(default_factory=list)


class Profile(msgspec.Struct, frozen=True):
    traits: list[TraitEstimate]
    goals: list[Goal]


class StoredObservation(msgspec.Struct, frozen=True):
    trait: str
    value: float
    weight: float
    source: str
    message_id: int
    cue: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class NearGoal:
    id: int
    description: str
    status: str
    similarity: float


class Weighed(Protocol):
    """What `smooth` needs of an observation, new (`Observation`) or stored."""

    @property
    def value(self) -> float: ...
    @property
    def weight(self) -> float: ...


def smooth(
    score: float,
    evidence: float,
    updated_at: datetime | None,
    observation: Weighed,
    now: datetime,
    config: ProfileConfig,
) -> tuple[float, float]:
    """The (score, evidence) after one observation (module docstring)."""
    if updated_at is not None:
        days = max(0.0, (now - updated_at).total_seconds() / 86400)
        evidence *= 0.5 ** (days / config.half_life_days)
    n = min(evidence, config.memory)
    alpha = observation.weight / (n + observation.weight)
    value = min(1.0, max(0.0, observation.value))
    return score + alpha * (value - score), evidence + observation.weight


def confidence(evidence: float, config: ProfileConfig) -> float:
    return evidence / (evidence + config.confidence_k)


_TRAIT_WORDS: dict[str, tuple[str, str]] = {
    # trait: (low pole, high pole)
    "openness": ("fond of the familiar and of routine", "curious and open to new things"),
    "conscientiousness": ("more spontaneous than organised", "organised, likes to plan ahead"),
    "extraversion": ("rather introverted, recharges alone", "outgoing, energised by people"),
    "agreeableness": ("blunt and sceptical of others", "warm and considerate"),
    "neuroticism": ("calm and even-tempered", "prone to worry and stress"),
}


def render_hint(profile: Profile, now: datetime, config: ProfileConfig) -> str | None:
    """One line for the prompt; None when nothing is known well enough to say."""
    parts = []
    leaning = [
        _TRAIT_WORDS[t.trait][t.score > 0.5]
        for t in profile.traits
        if t.confidence >= config.hint_confidence and abs(t.score - 0.5) >= config.hint_lean
    ]
    if leaning:
        parts.append("They come across as " + "; ".join(leaning) + ".")
    active = [g for g in profile.goals if g.status == "active"][: config.hint_goals]
    if active:
        parts.append("Their goals: " + "; ".join(_goal_text(g) for g in active) + ".")
    recent = now - timedelta(days=config.achieved_shown_days)
    achieved = [
        g.description for g in profile.goals if g.status == "achieved" and g.updated_at >= recent
    ]
    if achieved:
        parts.append("Recently achieved: " + "; ".join(achieved[:2]) + ".")
    return " ".join(parts) or None


def _goal_text(goal: Goal) -> str:
    if not goal.notes:
        return goal.description
    return f"{goal.description} (latest: {goal.notes[-1].note})"


_NEAREST_GOAL_SQL = """
SELECT id, description, status, 1 - (embedding <=> $2) AS similarity
FROM goals WHERE user_id = $1 AND status = ANY($3::text[])
ORDER BY embedding <=> $2, id DESC LIMIT 1
"""


# What the profile learns from messages is stored only while they exist: every source
# message is locked (FOR SHARE) until the insert commits, so a concurrent
# `MessageStore.replace_tail` either removed it first (nothing is stored) or waits, and
# then takes it back with the rest (`forget_drawn_from`). A profile job that read the
# exchange before an edit cannot bring the edited words back.
_SOURCE_KEPT = """(SELECT count(DISTINCT s) FROM unnest({ids}) AS s) = (
    SELECT count(*) FROM (
        SELECT 1 FROM messages WHERE id = ANY({ids}) AND user_id = {user} FOR SHARE
    ) AS kept)"""
_OBSERVE_SQL = f"""
INSERT INTO personality_observations (user_id, trait, value, weight, source, message_id, cue)
SELECT $1, $2, $3, $4, $5, $6, $7
WHERE {_SOURCE_KEPT.format(ids="ARRAY[$6::bigint]", user="$1")}
ON CONFLICT (user_id, message_id, trait, source) DO NOTHING RETURNING id
"""
_ADD_GOAL_SQL = f"""
INSERT INTO goals (user_id, description, embedding, source, source_message_ids)
SELECT $1, $2, $3, $4, $5 WHERE {_SOURCE_KEPT.format(ids="$5::bigint[]", user="$1")}
RETURNING id
"""
_ADD_NOTE_SQL = f"""
INSERT INTO goal_notes (goal_id, note, status, message_id)
SELECT $1, $2, $3, $4 FROM goals g
WHERE g.id = $1 AND {_SOURCE_KEPT.format(ids="ARRAY[$4::bigint]", user="g.user_id")}
ON CONFLICT (goal_id, message_id) DO NOTHING RETURNING id
"""


class ProfileStore:
    """Trait estimates, their observations, goals and notes of every user."""

    def __init__(self, pool: asyncpg.Pool, config: ProfileConfig | None = None) -> None:
        self._pool = pool
        self.config = config or ProfileConfig()

    async def observe(
        self, user_id: uuid.UUID, observations: Sequence[Observation], now: datetime | None = None
    ) -> int:
        """Fold new observations into the estimates; returns how many were new."""
        now = now or datetime.now(UTC)
        applied = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for observation in observations:
                applied += await self._observe_one(conn, user_id, observation, now)
        return applied

    async def _observe_one(
        self, conn: asyncpg.Connection, user_id: uuid.UUID, item: Observation, now: datetime
    ) -> int:
        inserted = await conn.fetchval(
            _OBSERVE_SQL,
            user_id,
            item.trait,
            item.value,
            item.weight,
            item.source,
            item.message_id,
            item.cue[:300],
        )
        if inserted is None:
            return 0  # a retried job (this message already counted), or the message is gone
        row = await conn.fetchrow(
            "SELECT score, evidence, updated_at FROM personality_traits"
            " WHERE user_id = $1 AND trait = $2 FOR UPDATE",
            user_id,
            item.trait,
        )
        if row is None:
            score, evidence = smooth(0.5, 0.0, None, item, now, self.config)
        else:
            score, evidence = smooth(
                row["score"], row["evidence"], row["updated_at"], item, now, self.config
            )
        await conn.execute(
            "INSERT INTO personality_traits"
            " (user_id, trait, score, evidence, observations, updated_at)"
            " VALUES ($1, $2, $3, $4, 1, $5) ON CONFLICT (user_id, trait) DO UPDATE"
            " SET score = $3, evidence = $4, observations = personality_traits.observations + 1,"
            " updated_at = $5",
            user_id,
            item.trait,
            score,
            evidence,
            now,
        )
        return 1

    async def traits(self, user_id: uuid.UUID) -> list[TraitEstimate]:
        """The user's estimates, in the order of `TRAITS` (traits never observed are left out)."""
        rows = await self._pool.fetch(
            "SELECT trait, score, evidence, observations, updated_at FROM personality_traits"
            " WHERE user_id = $1",
            user_id,
        )
        found = {
            row["trait"]: TraitEstimate(
                row["trait"],
                float(row["score"]),
                float(row["evidence"]),
                row["observations"],
                confidence(float(row["evidence"]), self.config),
                row["updated_at"],
            )
            for row in rows
        }
        return [found[t] for t in TRAITS if t in found]

    async def observations(self, user_id: uuid.UUID) -> list[StoredObservation]:
        rows = await self._pool.fetch(
            "SELECT trait, value, weight, source, message_id, cue, created_at"
            " FROM personality_observations WHERE user_id = $1 ORDER BY id",
            user_id,
        )
        return [StoredObservation(**dict(row)) for row in rows]

    async def goals(self, user_id: uuid.UUID) -> list[Goal]:
        """The user's goals with their notes, most recently updated first."""
        rows = await self._pool.fetch(
            "SELECT id, description, status, source, source_message_ids, created_at, updated_at"
            " FROM goals WHERE user_id = $1 ORDER BY updated_at DESC, id DESC",
            user_id,
        )
        notes = await self._pool.fetch(
            "SELECT n.goal_id, n.note, n.status, n.message_id, n.created_at FROM goal_notes n"
            " JOIN goals g ON g.id = n.goal_id WHERE g.user_id = $1 ORDER BY n.id",
            user_id,
        )
        by_goal: dict[int, list[GoalNote]] = {}
        for note in notes:
            by_goal.setdefault(note["goal_id"], []).append(
                GoalNote(note["note"], note["status"], note["message_id"], note["created_at"])
            )
        return [
            Goal(
                **{**dict(row), "source_message_ids": list(row["source_message_ids"])},
                notes=by_goal.get(row["id"], []),
            )
            for row in rows
        ]

    async def profile(self, user_id: uuid.UUID) -> Profile:
        return Profile(await self.traits(user_id), await self.goals(user_id))

    async def hint(self, user_id: uuid.UUID, now: datetime | None = None) -> str | None:
        """The prompt's line about who the user is and what they are working on, or None."""
        return render_hint(await self.profile(user_id), now or datetime.now(UTC), self.config)

    async def nearest_goal(
        self,
        user_id: uuid.UUID,
        embedding: npt.NDArray[np.float32],
        statuses: Sequence[GoalStatus] = ("active", "achieved", "abandoned"),
    ) -> NearGoal | None:
        row = await self._pool.fetchrow(_NEAREST_GOAL_SQL, user_id, embedding, list(statuses))
        if row is None:
            return None
        return NearGoal(row["id"], row["description"], row["status"], float(row["similarity"]))

    async def add_goal(
        self,
        user_id: uuid.UUID,
        description: str,
        embedding: npt.NDArray[np.float32],
        source: Source,
        message_ids: Sequence[int],
    ) -> int | None:
        """A new goal; None when one of ``message_ids`` is gone (see `_SOURCE_KEPT`)."""
        goal_id: int | None = await self._pool.fetchval(
            _ADD_GOAL_SQL,
            user_id,
            description[:200],
            embedding,
            source,
            list(message_ids),
        )
        return goal_id

    async def add_note(
        self, goal_id: int, note: str, status: GoalStatus | None, message_id: int
    ) -> bool:
        """A progress note (setting the status, if given); False if this message has one,
        or is gone (see `_SOURCE_KEPT`)."""
        async with self._pool.acquire() as conn, conn.transaction():
            added = await conn.fetchval(
                _ADD_NOTE_SQL,
                goal_id,
                note[:300],
                status,
                message_id,
            )
            if added is None:
                return False
            await conn.execute(
                "UPDATE goals SET status = coalesce($2, status), updated_at = now() WHERE id = $1",
                goal_id,
                status,
            )
        return True

    async def set_status(self, user_id: uuid.UUID, goal_id: int, status: GoalStatus) -> bool:
        """The user changes a goal's status themself; False when it is not theirs."""
        done = await self._pool.fetchval(
            "UPDATE goals SET status = $3, updated_at = now() WHERE id = $2 AND user_id = $1"
            " RETURNING id",
            user_id,
            goal_id,
            status,
        )
        return done is not None

    async def delete_goal(self, user_id: uuid.UUID, goal_id: int) -> bool:
        """Forget one goal and its notes; False when it is not the user's."""
        done = await self._pool.fetchval(
            "DELETE FROM goals WHERE id = $2 AND user_id = $1 RETURNING id", user_id, goal_id
        )
        return done is not None

    async def forget_personality(self, user_id: uuid.UUID) -> None:
        """Drop the estimates and every observation behind them."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM personality_observations WHERE user_id = $1", user_id)
            await conn.execute("DELETE FROM personality_traits WHERE user_id = $1", user_id)


async def forget_drawn_from(
    conn: asyncpg.Connection,
    user_id: uuid.UUID,
    message_ids: Sequence[int],
    config: ProfileConfig | None = None,
) -> None:
    """Take back what the profile drew from ``message_ids``, in the caller's transaction:
    the exchange an edit or a regeneration replaced (`MessageStore.replace_tail`) no
    longer says anything about the user.

    - trait observations from those messages go, and each trait they moved is rebuilt
      from the observations left, replayed in order at the times they were made (the
      same `smooth` steps the estimate took, without the removed ones); a trait left
      with none goes too;
    - goals named by those messages alone go (their notes with them); a goal also named
      elsewhere keeps its other sources;
    - progress notes from those messages go; where one had set the goal's status, the
      status goes back to the one the latest remaining note set ("active" with none).
      A status the user set by hand is not recorded apart from the notes, so such an
      edit resets it to what the notes say.
    """
    config = config or ProfileConfig()
    ids = list(message_ids)
    moved = await conn.fetch(
        "DELETE FROM personality_observations WHERE user_id = $1 AND message_id = ANY($2)"
        " RETURNING trait",
        user_id,
        ids,
    )
    for trait in sorted({row["trait"] for row in moved}):
        await _rebuild_trait(conn, user_id, trait, config)
    await conn.execute(
        "DELETE FROM goals WHERE user_id = $1 AND source_message_ids && $2::bigint[]"
        " AND source_message_ids <@ $2::bigint[]",
        user_id,
        ids,
    )
    await conn.execute(
        "UPDATE goals SET source_message_ids = ARRAY("
        "   SELECT s FROM unnest(source_message_ids) AS s WHERE s <> ALL($2::bigint[]))"
        " WHERE user_id = $1 AND source_message_ids && $2::bigint[]",
        user_id,
        ids,
    )
    notes = await conn.fetch(
        "DELETE FROM goal_notes n USING goals g"
        " WHERE g.id = n.goal_id AND g.user_id = $1 AND n.message_id = ANY($2)"
        " RETURNING n.goal_id, n.status",
        user_id,
        ids,
    )
    for goal_id in sorted({row["goal_id"] for row in notes if row["status"] is not None}):
        await conn.execute(
            "UPDATE goals SET updated_at = now(), status = coalesce((SELECT status FROM"
            " goal_notes WHERE goal_id = $1 AND status IS NOT NULL ORDER BY id DESC LIMIT 1),"
            " 'active') WHERE id = $1",
            goal_id,
        )


async def _rebuild_trait(
    conn: asyncpg.Connection, user_id: uuid.UUID, trait: str, config: ProfileConfig
) -> None:
    rows = await conn.fetch(
        "SELECT trait, value, weight, source, message_id, cue, created_at"
        " FROM personality_observations WHERE user_id = $1 AND trait = $2 ORDER BY id",
        user_id,
        trait,
    )
    if not rows:
        await conn.execute(
            "DELETE FROM personality_traits WHERE user_id = $1 AND trait = $2", user_id, trait
        )
        return
    score, evidence, at = 0.5, 0.0, None
    for row in rows:
        seen = StoredObservation(**dict(row))
        score, evidence = smooth(score, evidence, at, seen, seen.created_at, config)
        at = seen.created_at
    await conn.execute(
        "UPDATE personality_traits SET score = $3, evidence = $4, observations = $5,"
        " updated_at = $6 WHERE user_id = $1 AND trait = $2",
        user_id,
        trait,
        score,
        evidence,
        len(rows),
        at,
    )
