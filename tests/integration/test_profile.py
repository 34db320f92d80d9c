"""Personality and goal tracking on real PostgreSQL, Redis, MiniLM and the tiny llama.cpp model.

The scripted conversations run through the rule signals with the real
embedder; `ScriptedGenerator` scripts only the model's answer; one test runs
the real tiny random model, whose answer may be anything valid or not.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import new_user
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from inference.embedder import SentenceEmbedder
from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from memory.consolidation import Consolidator
from memory.episodes import Turn
from memory.extraction import Extractor
from memory.jobs import JobsConfig, MemoryJobDeps, create_queue, enqueue_profile_update, make_worker
from memory.longterm import LongTermMemory
from memory.messages import ConversationStore, MessageStore
from memory.profile import ProfileStore
from memory.profile_update import ProfileUpdater
from memory.protocols import PromptMessage
from memory.users import UserData
from server.app import create_app
from server.memory_jobs import EngineJSONGenerator
from server.settings import Settings


class ScriptedGenerator:
    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    async def generate_json(
        self, prompt_messages: Sequence[PromptMessage], schema: Mapping[str, Any], user_id: str
    ) -> str:
        self.prompts.append("\n".join(m.content for m in prompt_messages))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def conversation(
    pool: asyncpg.Pool, user_id: uuid.UUID, *exchanges: tuple[str, str]
) -> list[Turn]:
    messages = MessageStore(pool)
    conv = (await ConversationStore(pool).create(user_id)).id
    turns = []
    for said, reply in exchanges:
        a = await messages.append(conv, user_id, "user", said)
        b = await messages.append(conv, user_id, "assistant", reply)
        turns += [Turn(a.id, "user", said), Turn(b.id, "assistant", reply)]
    return turns


SCRIPT = (
    ("I'm such an introvert, parties drain me.", "That makes sense."),
    ("I want to run a 10k this autumn.", "Great goal!"),
    ("I need some time alone after work, I can't stop worrying about deadlines.", "I hear you."),
    ("I prefer staying home on Fridays.", "Cosy."),
    ("I ran 5 km this morning without stopping!", "Well done!"),
)


async def test_rule_signals_from_a_scripted_conversation(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    store = ProfileStore(pool)
    updater = ProfileUpdater(store, embedder, None)
    turns = await conversation(pool, user, *SCRIPT)
    confidences = []
    for end in range(2, len(turns) + 1, 2):  # one job per turn, as the chat turn queues them
        result = await updater.update(user, turns[end - 2 : end])
        assert result.model == "skipped"
        confidences.append(
            next((t.confidence for t in await store.traits(user) if t.trait == "extraversion"), 0.0)
        )
    traits = {t.trait: t for t in await store.traits(user)}
    assert set(traits) == {"extraversion", "neuroticism"}
    assert traits["extraversion"].score < 0.2 and traits["extraversion"].observations == 3
    assert traits["neuroticism"].score > 0.8
    assert confidences == sorted(confidences) and confidences[-1] > confidences[0]

    goals = await store.goals(user)
    assert [(g.description, g.status, g.source) for g in goals] == [
        ("run a 10k this autumn", "active", "rules")
    ]
    assert [n.note for n in goals[0].notes] == ["I ran 5 km this morning without stopping!"]
    hint = await store.hint(user)
    assert hint is not None and "run a 10k this autumn (latest: I ran 5 km" in hint

    # A retried job counts nothing twice.
    again = await updater.update(user, turns)
    assert (again.observations, again.goals_added, again.notes_added) == (0, [], 0)
    assert {t.trait: t.observations for t in await store.traits(user)}["extraversion"] == 3

    done = await conversation(pool, user, ("I did it, I finished the 10k race today!", "Wow!"))
    await updater.update(user, done)
    assert [g.status for g in await store.goals(user)] == ["achieved"]
    restated = await conversation(pool, user, ("My goal is to run a 10k this autumn.", "Again!"))
    await updater.update(user, restated)
    goals = await store.goals(user)
    assert len(goals) == 1 and goals[0].status == "active"  # the same goal, active again


async def test_a_replaced_exchange_takes_back_what_the_profile_drew_from_it(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    """An edited message no longer says anything about the user: its trait observations go
    (the trait rebuilt as if it had never been seen), its goal notes and the status one
    set, and goals it alone named. Another user's profile is untouched."""
    user, other = await new_user(pool), await new_user(pool)
    store, messages = ProfileStore(pool), MessageStore(pool)
    updater = ProfileUpdater(store, embedder, None)
    opening = (("I'm such an introvert, parties drain me.", "Ok."), SCRIPT[1])
    for who in (user, other):
        for exchange in opening:
            turns = await conversation(pool, who, exchange)
            await updater.update(who, turns)
    conv = (await ConversationStore(pool).create(user)).id
    before = await store.traits(user)
    assert [(t.trait, t.observations) for t in before] == [("extraversion", 1)]
    theirs = (await store.traits(other), await store.goals(other))

    async def say(text: str) -> list[Turn]:
        said = await messages.append(conv, user, "user", text)
        reply = await messages.append(conv, user, "assistant", "I see.")
        turns = [Turn(said.id, "user", text), Turn(reply.id, "assistant", "I see.")]
        await updater.update(user, turns)
        return turns

    finished = await say(
        "I did it, I finished the 10k race today! Parties drain me, I'm an introvert."
    )
    done = finished[0].message_id
    goals = await store.goals(user)
    assert [(g.status, len(g.notes)) for g in goals] == [("achieved", 1)]
    assert [(t.trait, t.observations) for t in await store.traits(user)] == [("extraversion", 2)]

    await messages.replace_tail(conv, user, done, "user", "Never mind.")

    after = await store.traits(user)
    assert [(t.trait, t.observations) for t in after] == [("extraversion", 1)]
    assert after[0].score == pytest.approx(before[0].score, abs=1e-6)
    assert after[0].evidence == pytest.approx(before[0].evidence, rel=1e-3)
    assert {o.message_id for o in await store.observations(user)}.isdisjoint({done})
    goals = await store.goals(user)
    assert [(g.description, g.status, g.notes) for g in goals] == [
        ("run a 10k this autumn", "active", [])
    ]
    # a profile job that read the exchange before the edit stores nothing of it now
    late = await ProfileUpdater(store, embedder, None).update(user, finished)
    assert (late.observations, late.notes_added) == (0, 0)
    assert await store.traits(user) == after and await store.goals(user) == goals

    # a goal named only by the replaced message goes; a new reply to it changes nothing
    paint = (await say("I want to learn to paint."))[0].message_id
    assert len(await store.goals(user)) == 2
    await messages.replace_tail(conv, user, paint, "assistant", "Lovely.")
    assert len(await store.goals(user)) == 2
    await messages.replace_tail(conv, user, paint, "user", "Anyway.")
    assert [g.description for g in await store.goals(user)] == ["run a 10k this autumn"]
    assert (await store.traits(other), await store.goals(other)) == theirs


async def test_model_signals_are_grounded_and_update_goals(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    store = ProfileStore(pool)
    first = await conversation(pool, user, ("I'd really like to learn the piano.", "Lovely."))
    await ProfileUpdater(store, embedder, None).update(user, first)
    [piano] = await store.goals(user)
    answer = {
        "traits": [
            {"trait": "openness", "level": 0.9, "evidence": "loves jazz improvisation"},
            {"trait": "agreeableness", "level": 0.1, "evidence": "hates kittens"},  # not said
        ],
        "goals": [
            {
                "goal": "learn the piano",
                "status": "active",
                "note": "first lesson booked",
                "known": 1,
            },
            {"goal": "write a jazz album", "status": "active", "note": None, "known": None},
        ],
    }
    generator = ScriptedGenerator(json.dumps(answer))
    turns = await conversation(
        pool,
        user,
        ("I booked my first piano lesson, I love jazz improvisation.", "Exciting!"),
        ("One day I'd write a whole jazz album.", "You could!"),
    )
    result = await ProfileUpdater(store, embedder, generator).update(user, turns, use_model=True)
    assert result.model == "applied" and result.dropped == ["hates kittens"]
    assert "1. learn the piano" in generator.prompts[0]
    traits = {t.trait: t for t in await store.traits(user)}
    # The rule cue "I love jazz" (1.0, weight 0.5) and the model's 0.9 (weight 1.0), averaged.
    assert set(traits) == {"openness"} and traits["openness"].observations == 2
    assert traits["openness"].score == pytest.approx((0.5 * 1.0 + 1.0 * 0.9) / 1.5)
    goals = {g.description: g for g in await store.goals(user)}
    assert set(goals) == {"learn the piano", "write a jazz album"}
    assert [n.note for n in goals["learn the piano"].notes] == ["first lesson booked"]
    assert goals["write a jazz album"].source == "model"
    assert piano.id == goals["learn the piano"].id

    broken = ProfileUpdater(store, embedder, ScriptedGenerator("{not json"))
    more = await conversation(pool, user, ("I'm so stressed out about work.", "Oh no."))
    failed = await broken.update(user, more, use_model=True)
    assert failed.model == "unusable" and failed.reason and "invalid JSON" in failed.reason
    assert failed.observations == 1  # the rule signal is kept


async def test_tiny_model_reading_never_breaks_the_update(
    pool: asyncpg.Pool, embedder: SentenceEmbedder, tiny_gguf: Path
) -> None:
    engine = LlamaCppEngine(
        LlamaCppConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=2, n_threads=1)
    )
    await engine.start()
    try:
        user = await new_user(pool)
        store = ProfileStore(pool)
        generator = EngineJSONGenerator(engine, max_tokens=256)
        turns = await conversation(pool, user, *SCRIPT[:3])
        result = await ProfileUpdater(store, embedder, generator).update(
            user, turns, use_model=True
        )
    finally:
        await engine.close()
    assert result.model in {"applied", "unusable"}
    # Whatever the random model said, the rule signals are in.
    traits = {t.trait: t for t in await store.traits(user)}
    assert traits["extraversion"].score < 0.5 and traits["neuroticism"].score > 0.5
    assert any(g.description == "run a 10k this autumn" for g in await store.goals(user))


async def test_profile_job_round_trip(
    pool: asyncpg.Pool, embedder: SentenceEmbedder, redis_url: str
) -> None:
    user = await new_user(pool)
    turns = await conversation(pool, user, ("I want to learn Spanish this year.", "¡Vamos!"))
    conv = await pool.fetchval(
        "SELECT conversation_id FROM messages WHERE id = $1", turns[-1].message_id
    )
    config = JobsConfig(concurrency=1, retries=1, profile_model_every_n_turns=0)
    queue = create_queue(redis_url, name=f"test-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    store = LongTermMemory(pool, embedder)
    deps = MemoryJobDeps(
        pool,
        Extractor(pool, store, embedder, ScriptedGenerator()),
        Consolidator(pool, store, None),
        config,
        ProfileUpdater(ProfileStore(pool), embedder, None),
    )
    worker = make_worker(queue, deps, cron=False)
    task = asyncio.create_task(worker.start())
    try:
        key = await enqueue_profile_update(
            queue,
            config,
            user_id=user,
            conversation_id=conv,
            last_message_id=turns[-1].message_id,
            turn_number=1,
        )
        assert key == f"profile:{conv}:{turns[-1].message_id}"
        job = await queue.job(key)
        assert job is not None
        await job.refresh(until_complete=60)
        assert job.status == "complete", job.error
        assert job.result["model"] == "skipped" and len(job.result["goals_added"]) == 1
    finally:
        await worker.stop()
        task.cancel()
        await queue.disconnect()
    assert [g.description for g in await ProfileStore(pool).goals(user)] == [
        "learn Spanish this year"
    ]


async def test_export_and_erase_cover_the_profile(
    pool: asyncpg.Pool, embedder: SentenceEmbedder, shared_redis: Redis
) -> None:
    user = await new_user(pool)
    other = await new_user(pool)
    for who in (user, other):
        turns = await conversation(
            pool, who, ("I'm an introvert and I want to learn to paint.", "Ok")
        )
        await ProfileUpdater(ProfileStore(pool), embedder, None).update(who, turns)
    data = UserData(pool, shared_redis, LongTermMemory(pool, embedder))
    export = await data.export(user)
    assert export is not None
    assert [t.trait for t in export.personality] == ["extraversion"]
    assert export.personality_observations[0].cue == "I'm an introvert"
    assert [g.description for g in export.goals] == ["learn to paint"]
    report = await data.erase(user)
    assert report.goals == 1
    for table in ("personality_traits", "personality_observations", "goals"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", user) == 0
        assert await pool.fetchval(f"SELECT count(*) FROM {table} WHERE user_id = $1", other) > 0
    assert await pool.fetchval("SELECT count(*) FROM goal_notes") == 0


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def test_profile_api(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    headers = []
    users = []
    for _ in range(2):
        credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
        users.append(
            uuid.UUID((await client.post("/api/v1/auth/register", json=credentials)).json()["id"])
        )
        token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
        headers.append({"Authorization": f"Bearer {token}"})
    turns = await conversation(pool, users[0], ("I'm so anxious, I want to learn to swim.", "Ok"))
    await ProfileUpdater(ProfileStore(pool), embedder, None).update(users[0], turns)

    profile = (await client.get("/api/v1/me/profile", headers=headers[0])).json()
    assert [t["trait"] for t in profile["traits"]] == ["neuroticism"]
    assert 0 < profile["traits"][0]["confidence"] < 1
    [swim] = profile["goals"]
    assert (swim["description"], swim["status"]) == ("learn to swim", "active")
    assert (await client.get("/api/v1/me/profile", headers=headers[1])).json() == {
        "traits": [],
        "goals": [],
    }
    url = f"/api/v1/me/goals/{swim['id']}"
    assert (
        await client.patch(url, json={"status": "achieved"}, headers=headers[1])
    ).status_code == 404
    assert (await client.patch(url, json={"status": "done"}, headers=headers[0])).status_code == 400
    assert (
        await client.patch(url, json={"status": "achieved"}, headers=headers[0])
    ).status_code == 200
    profile = (await client.get("/api/v1/me/profile", headers=headers[0])).json()
    assert profile["goals"][0]["status"] == "achieved"
    assert (await client.delete(url, headers=headers[1])).status_code == 404
    assert (await client.delete(url, headers=headers[0])).status_code == 204
    assert (await client.delete("/api/v1/me/personality", headers=headers[0])).status_code == 204
    assert (await client.get("/api/v1/me/profile", headers=headers[0])).json() == {
        "traits": [],
        "goals": [],
    }
