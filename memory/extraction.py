"""Fact extraction after a turn: episode always kept, facts added, updated or skipped.

One extraction of a window of turns:

1. The turns are stored as episodic memories (idempotent: a retried job finds
   the episode it stored before instead of storing it twice).
2. The user's stored facts nearest to the turns are listed in the prompt with
   short references, and the chat model answers JSON constrained to
   `FACTS_SCHEMA`: facts, each with an importance and optionally the reference
   of the listed fact it replaces (a changed fact: moved city, new job).
3. The answer is parsed and validated here. Unusable answers (engine error,
   empty, invalid JSON, wrong shape, nothing grounded in the turns: a fact
   must share a content word with the turns and name the user, `is_about_user`) give a
   result with status ``unusable`` and the reason, logged; the episode stays.
4. Each fact is decided against the user's most similar live fact (cosine of
   MiniLM embeddings, exact scan of the user's semantic memories):

   - the model names a listed fact it replaces -> **update** (supersede it),
     unless the two are the same statement (below) -> **no-op**;
   - similarity >= ``noop_similarity`` (0.90) and the new fact brings no new
     salient token (a number or a capitalised word) -> **no-op**: a
     paraphrase of what is stored ("has a dog named Max" / "'s dog is called
     Max": 0.96);
   - similarity >= ``noop_similarity`` with a new salient token -> **update**:
     the same statement with a changed detail ("is 34" / "is 35": 0.96);
   - otherwise -> **add**.

   Why not similarity alone: MiniLM puts contradicting facts far apart ("lives
   in Berlin" / "lives in Paris": 0.65, "works as a nurse" / "as a teacher":
   0.61) and unrelated ones not much further ("likes jazz" / "likes hiking":
   0.39), so no threshold tells a change from a new fact; the model, shown the
   stored fact, can. Similarity is the guard against duplicates piling up.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec
import numpy as np
import numpy.typing as npt

from memory.episodes import Turn, cut_episodes
from memory.errors import SourcesGone, UnusableAnswer
from memory.longterm import DIMENSIONS, LongTermMemory
from memory.model_answers import ask_json, decode_answer
from memory.protocols import Embedder, JSONGenerator

log = logging.getLogger(__name__)

Status = Literal["applied", "empty", "unusable", "sources_gone"]
Action = Literal["add", "update", "noop"]

FACTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "facts": {
            "type": "array",
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "content": {"type": "string", "minLength": 3, "maxLength": 300},
                    "importance": {"type": "number", "minimum": 0, "maximum": 1},
                    "replaces": {"type": ["integer", "null"]},
                },
                "required": ["content", "importance", "replaces"],
            },
        }
    },
    "required": ["facts"],
}

_SYSTEM = (
    "You extract durable facts about the user from a conversation: who they are, "
    "people and pets in their life, preferences, plans, events. One short sentence "
    'per fact, starting with "The user". Skip small talk and anything about the '
    "assistant. importance: 0.2 trivia, 0.5 ordinary, 0.9 central to the user's life. "
    "If a fact changes one of the known facts listed, set replaces to its number, "
    'else null. Answer only JSON: {"facts": [...]}; an empty list when nothing is worth keeping.'
)


@dataclass(frozen=True, slots=True)
class ExtractionConfig:
    """Thresholds of the add / update / no-op decision (module docstring)."""

    noop_similarity: float = 0.90
    context_facts: int = 8  # stored facts shown to the model
    max_facts: int = 8
    fact_importance_floor: float = 0.05


class ExtractedFact(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One fact as the model proposed it (`FACTS_SCHEMA`)."""

    content: str
    importance: float
    replaces: int | None = None


class ExtractedFacts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    facts: list[ExtractedFact]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one fact: ``memory_id`` is the new memory (None for a no-op)."""

    action: Action
    content: str
    memory_id: int | None
    target_id: int | None  # the stored fact updated or matched
    similarity: float | None


class ExtractionResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of one extraction, as the job returns and logs it."""

    status: Status
    reason: str | None = None
    episode_ids: list[int]
    decisions: list[Decision] = msgspec.field(default_factory=list)
    dropped: list[str] = msgspec.field(default_factory=list)  # facts rejected as ungrounded


@dataclass(frozen=True, slots=True)
class _Stored:
    id: int
    content: str
    similarity: float


# Nearest live facts of the user, exact: the CTE keeps the HNSW index out.
_NEAREST_FACTS_SQL = """
WITH mine AS MATERIALIZED (
    SELECT id, content, embedding FROM memories
    WHERE user_id = $1 AND kind = 'semantic' AND superseded_by IS NULL
)
SELECT id, content, 1 - (embedding <=> $2) AS similarity
FROM mine ORDER BY embedding <=> $2, id DESC LIMIT $3
"""
_SAME_EPISODE_SQL = """
SELECT id FROM memories
WHERE user_id = $1 AND kind = 'episodic' AND source_message_ids = $2::bigint[]
ORDER BY id LIMIT 1
"""


class Extractor:
    """Runs one extraction for a window of turns (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: LongTermMemory,
        embedder: Embedder,
        generator: JSONGenerator,
        config: ExtractionConfig | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._embedder = embedder
        self._generator = generator
        self.config = config or ExtractionConfig()

    async def extract(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID | None,
        turns: Sequence[Turn],
        occurred_at: datetime | None = None,
    ) -> ExtractionResult:
        """Store the turns as episodes, then extract and apply facts from them.

        Every memory is stored only while the messages it comes from still exist
        (``require_sources``): a turn the user edits or regenerates while this runs
        leaves nothing behind (status ``sources_gone``; what was stored before the
        edit went with the messages, `MessageStore.replace_tail`)."""
        try:
            return await self._extract(user_id, conversation_id, turns, occurred_at)
        except SourcesGone as exc:
            log.info("extraction dropped: %s", exc, extra={"user_id": str(user_id)})
            return ExtractionResult(status="sources_gone", reason=str(exc), episode_ids=[])

    async def _extract(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID | None,
        turns: Sequence[Turn],
        occurred_at: datetime | None,
    ) -> ExtractionResult:
        episode_ids = await self._store_episodes(user_id, conversation_id, turns, occurred_at)
        text = "\n".join(f"{t.speaker}: {t.text}" for t in turns)
        known = await self._nearest(user_id, await self._embed(text), self.config.context_facts)
        try:
            facts = await self._ask(user_id, text, known)
        except UnusableAnswer as exc:
            return _unusable(user_id, episode_ids, str(exc))
        if not facts:
            return ExtractionResult(status="empty", episode_ids=episode_ids)
        grounded = [f for f in facts if is_grounded(f.content, text) and is_about_user(f.content)]
        dropped = [f.content for f in facts if f not in grounded]
        if not grounded:
            return _unusable(user_id, episode_ids, "no fact grounded in the turns", dropped)
        sources = [t.message_id for t in turns]
        refs = {i + 1: stored for i, stored in enumerate(known)}
        decisions = [
            await self._apply(user_id, conversation_id, fact, refs, sources) for fact in grounded
        ]
        return ExtractionResult(
            status="applied", episode_ids=episode_ids, decisions=decisions, dropped=dropped
        )

    async def _store_episodes(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID | None,
        turns: Sequence[Turn],
        occurred_at: datetime | None,
    ) -> list[int]:
        """Episodic memories of the turns; one already stored for the same turns is reused."""
        ids = []
        for episode in cut_episodes(turns, occurred_at):
            found = await self._pool.fetchval(
                _SAME_EPISODE_SQL, user_id, episode.source_message_ids
            )
            if found is None:
                found = await self._store.add(
                    user_id,
                    "episodic",
                    episode.content,
                    0.5,
                    episode.source_message_ids,
                    conversation_id=conversation_id,
                    occurred_at=episode.occurred_at,
                    context=episode.context,  # folded into the vector (memory.longterm)
                    require_sources=True,
                )
            ids.append(int(found))
        return ids

    async def _ask(
        self, user_id: uuid.UUID, text: str, known: Sequence[_Stored]
    ) -> list[ExtractedFact]:
        """The model's facts, validated; `UnusableAnswer` when there is nothing usable."""
        listed = "\n".join(f"{i + 1}. {s.content}" for i, s in enumerate(known)) or "(none)"
        question = f"Known facts:\n{listed}\n\nConversation:\n{text}"
        raw = await ask_json(self._generator, _SYSTEM, question, FACTS_SCHEMA, user_id)
        return parse_facts(raw, self.config.max_facts)

    async def _apply(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID | None,
        fact: ExtractedFact,
        refs: dict[int, _Stored],
        sources: list[int],
    ) -> Decision:
        """Add, update or skip one fact against the user's stored facts."""
        vector = await self._embed(fact.content)
        nearest = await self._nearest(user_id, vector, 1)
        named = refs.get(fact.replaces) if fact.replaces is not None else None
        action, target = decide(fact.content, named, nearest[0] if nearest else None, self.config)
        importance = max(self.config.fact_importance_floor, fact.importance)
        memory_id = None
        if action == "add":
            memory_id = await self._store.add(
                user_id,
                "semantic",
                fact.content,
                importance,
                sources,
                conversation_id,
                vector,
                require_sources=True,
            )
        elif action == "update" and target is not None:
            memory_id = await self._store.supersede(
                user_id, target.id, fact.content, importance, sources, vector, require_sources=True
            )
            # A later fact of the same answer naming it again (the small model does) is
            # decided by similarity: the stored fact it names is no longer current.
            for ref in [ref for ref, stored in refs.items() if stored.id == target.id]:
                del refs[ref]
        return Decision(
            action=action,
            content=fact.content,
            memory_id=memory_id,
            target_id=target.id if target else None,
            similarity=target.similarity if target else None,
        )

    async def _nearest(
        self, user_id: uuid.UUID, vector: npt.NDArray[np.float32], limit: int
    ) -> list[_Stored]:
        rows = await self._pool.fetch(_NEAREST_FACTS_SQL, user_id, vector, limit)
        return [_Stored(r["id"], r["content"], float(r["similarity"])) for r in rows]

    async def _embed(self, text: str) -> npt.NDArray[np.float32]:
        vector = np.asarray((await self._embedder.embed([text]))[0], dtype=np.float32)
        return vector.reshape(DIMENSIONS)


def parse_facts(raw: str, max_facts: int) -> list[ExtractedFact]:
    """Decode and validate the model's answer, or raise `UnusableAnswer` saying why."""
    answer = decode_answer(raw, ExtractedFacts)
    facts = [
        ExtractedFact(" ".join(f.content.split()), f.importance, f.replaces) for f in answer.facts
    ]
    if any(not 0.0 <= f.importance <= 1.0 for f in facts):
        raise UnusableAnswer("schema mismatch: importance outside [0, 1]")
    if any(len(f.content) < 3 for f in facts):
        raise UnusableAnswer("schema mismatch: a fact without content")
    return facts[:max_facts]


def decide(
    content: str,
    named: _Stored | None,
    nearest: _Stored | None,
    config: ExtractionConfig,
) -> tuple[Action, _Stored | None]:
    """The action for one fact and the stored fact it concerns (module docstring)."""
    if named is not None:
        same = nearest is not None and nearest.id == named.id and _same(content, nearest, config)
        return ("noop" if same else "update"), named
    if nearest is not None and nearest.similarity >= config.noop_similarity:
        return ("noop" if _same(content, nearest, config) else "update"), nearest
    return "add", None


def _same(content: str, stored: _Stored, config: ExtractionConfig) -> bool:
    """A paraphrase: very similar and no new number or name."""
    new = salient_tokens(content) - salient_tokens(stored.content)
    return stored.similarity >= config.noop_similarity and not new


_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'-]*")
_STOPWORDS = frozenset(
    {
        *("the", "user", "users", "and", "for", "with", "are", "was", "were", "been", "has"),
        *("have", "had", "his", "her", "their", "they", "them", "she", "its", "this", "that"),
        *("from", "not", "now", "also", "likes", "like", "loves", "enjoys", "wants"),
    }
)


def salient_tokens(text: str) -> set[str]:
    """Numbers and capitalised words past the first: the details that make a fact differ."""
    words = _WORD.findall(text)
    return {
        w.lower()
        for i, w in enumerate(words)
        if any(c.isdigit() for c in w) or (i and w[0].isupper())
    }


def content_words(text: str) -> set[str]:
    """Numbers, and lower-cased words of three or more letters that are not function words."""
    words = {w.lower().removesuffix("'s") for w in _WORD.findall(text)}
    return {w for w in words if w.isdigit() or (len(w) >= 3 and w not in _STOPWORDS)}


def is_grounded(fact: str, turns_text: str) -> bool:
    """Whether the fact shares a content word with the turns (a cheap hallucination guard)."""
    return bool(content_words(fact) & content_words(turns_text))


_USER = re.compile(r"\buser\b", re.IGNORECASE)


def is_about_user(fact: str) -> bool:
    """Whether the fact is a statement about the user: it names them ("The user ...",
    "... the user's sister"), as the prompt asks every fact to. What the 135M model
    writes instead is titles, copied sentences and loops (docs/memory.md,
    "Extraction, measured"): none of it names the user."""
    return bool(_USER.search(fact))


def _unusable(
    user_id: uuid.UUID, episode_ids: list[int], reason: str, dropped: list[str] | None = None
) -> ExtractionResult:
    log.warning("memory extraction unusable for user %s: %s", user_id, reason)
    return ExtractionResult(
        status="unusable", reason=reason, episode_ids=episode_ids, dropped=dropped or []
    )
