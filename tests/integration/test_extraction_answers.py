"""Extraction of answers the packaged 135M model really gives (scripts/bench_extraction.py
on LoCoMo), on real PostgreSQL and MiniLM; only the model's answer is scripted.
"""

from __future__ import annotations

import json
import uuid

import asyncpg
from helpers import ScriptedGenerator, live_facts, new_user

from inference.embedder import SentenceEmbedder
from memory.episodes import Turn
from memory.extraction import Extractor
from memory.longterm import LongTermMemory
from memory.messages import ConversationStore, MessageStore


def answer(*facts: tuple[str, int | None]) -> str:
    items = [{"content": c, "importance": 0.5, "replaces": r} for c, r in facts]
    return json.dumps({"facts": items})


async def said(
    pool: asyncpg.Pool, user: uuid.UUID, conversation: uuid.UUID, *lines: tuple[str, str]
) -> list[Turn]:
    messages = MessageStore(pool)
    turns = []
    for role, text in lines:
        stored = await messages.append(conversation, user, role, text)  # type: ignore[arg-type]
        turns.append(Turn(stored.id, role, text))
    return turns


async def test_two_facts_naming_the_same_known_fact_replace_it_once(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    """The answer names listed fact 1 twice: the first fact replaces it, the second is
    decided by similarity (it failed the whole job with AlreadySuperseded before)."""
    user = await new_user(pool)
    conversation = (await ConversationStore(pool).create(user)).id
    store = LongTermMemory(pool, embedder)
    await store.add(user, "semantic", "The user lives in Berlin", 0.8, [])
    scripted = ScriptedGenerator(
        answer(("The user lives in Paris", 1), ("The user started a job at a bakery", 1))
    )
    turns = await said(
        pool,
        user,
        conversation,
        ("user", "I moved from Berlin to Paris and started a job at a bakery."),
        ("assistant", "What a change!"),
    )
    result = await Extractor(pool, store, embedder, scripted).extract(user, conversation, turns)
    await store.close()
    assert result.status == "applied"
    assert [d.action for d in result.decisions] == ["update", "add"]
    assert await live_facts(pool, user) == [
        "The user lives in Paris",
        "The user started a job at a bakery",
    ]


async def test_titles_and_copied_sentences_are_not_stored_as_facts(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    """What the 135M model answered on LoCoMo: a title and a copied sentence share words
    with the turn (the grounding check passes them) but say nothing about the user.
    Only the fact that names the user is stored; the episode is kept either way."""
    user = await new_user(pool)
    conversation = (await ConversationStore(pool).create(user)).id
    store = LongTermMemory(pool, embedder)
    scripted = ScriptedGenerator(
        answer(("The Lean Startup", None), ("The pic takes me back.", None)),
        answer(("The user is reading The Lean Startup", None), ("The Lean Startup", None)),
    )
    run = Extractor(pool, store, embedder, scripted)
    line = 'I\'m reading "The Lean Startup" for my biz. The pic takes me back.'
    turns = await said(pool, user, conversation, ("user", line), ("assistant", "Nice!"))
    first = await run.extract(user, conversation, turns)
    assert first.status == "unusable" and first.reason == "no fact grounded in the turns"
    assert first.dropped == ["The Lean Startup", "The pic takes me back."]
    assert await live_facts(pool, user) == []
    second = await run.extract(user, conversation, turns)
    await store.close()
    assert [d.content for d in second.decisions] == ["The user is reading The Lean Startup"]
    assert await live_facts(pool, user) == ["The user is reading The Lean Startup"]
    episodes = await pool.fetchval(
        "SELECT count(*) FROM memories WHERE user_id = $1 AND kind = 'episodic'", user
    )
    assert episodes == 1  # the same turns: the retried extraction reuses its episode
