"""Extraction, consolidation and memory jobs on real PostgreSQL, Redis, MiniLM and llama.cpp.

The add / update / no-op tests script only the model's answer (`ScriptedGenerator`,
a fake of the LLM edge); storage, embeddings and similarity are real. The failure
path runs the real tiny random GGUF model through the llama.cpp engine.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import asyncpg
import pytest
from helpers import ScriptedGenerator, live_facts, new_user

from inference.embedder import SentenceEmbedder
from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from memory.consolidation import SUMMARY_PREFIX, ConsolidationConfig, Consolidator
from memory.episodes import Turn
from memory.extraction import ExtractionResult, Extractor, is_grounded
from memory.jobs import (
    JobsConfig,
    MemoryJobDeps,
    create_queue,
    enqueue_extraction,
    make_worker,
    should_extract,
)
from memory.longterm import LongTermMemory
from memory.messages import ConversationStore, MessageStore
from server.memory_jobs import EngineJSONGenerator


def facts(*items: tuple[str, float] | tuple[str, float, int]) -> str:
    return json.dumps(
        {
            "facts": [
                {"content": i[0], "importance": i[1], "replaces": i[2] if len(i) > 2 else None}
                for i in items
            ]
        }
    )


@pytest.fixture
def store(pool: asyncpg.Pool, embedder: SentenceEmbedder) -> LongTermMemory:
    return LongTermMemory(pool, embedder)


async def say(
    pool: asyncpg.Pool, user_id: uuid.UUID, conversation_id: uuid.UUID, user: str, reply: str
) -> list[Turn]:
    messages = MessageStore(pool)
    a = await messages.append(conversation_id, user_id, "user", user)
    b = await messages.append(conversation_id, user_id, "assistant", reply)
    return [Turn(a.id, "user", user), Turn(b.id, "assistant", reply)]


async def episodes(pool: asyncpg.Pool, user_id: uuid.UUID) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM memories WHERE user_id = $1 AND kind = 'episodic'", user_id
    )
    return count


def extractor(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder, gen: ScriptedGenerator
) -> Extractor:
    return Extractor(pool, store, embedder, gen)


async def test_add_then_paraphrase_is_noop_and_changes_update(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    gen = ScriptedGenerator(
        facts(("The user has a dog named Max", 0.6), ("The user is 34 years old", 0.5)),
        facts(("The user's dog is called Max", 0.6)),
        facts(("The user is 35 years old", 0.5)),
        facts(("The user lives in Paris", 0.8, 1)),
    )
    run = extractor(pool, store, embedder, gen)

    turn = await say(pool, user, conv, "I'm 34 and my dog Max is a beagle.", "Hi Max!")
    first = await run.extract(user, conv, turn)
    assert [d.action for d in first.decisions] == ["add", "add"]

    turn = await say(pool, user, conv, "Max, my dog, chewed my shoe.", "Oh no!")
    second = await run.extract(user, conv, turn)
    assert [d.action for d in second.decisions] == ["noop"]
    assert second.decisions[0].target_id == first.decisions[0].memory_id

    turn = await say(pool, user, conv, "It was my birthday, I'm 35 now.", "Happy birthday!")
    third = await run.extract(user, conv, turn)
    assert [d.action for d in third.decisions] == ["update"]
    assert third.decisions[0].target_id == first.decisions[1].memory_id
    assert await live_facts(pool, user) == [
        "The user has a dog named Max",
        "The user is 35 years old",
    ]

    await store.add(user, "semantic", "The user lives in Berlin", 0.8, [])
    turn = await say(pool, user, conv, "I moved from Berlin to Paris.", "Exciting!")
    fourth = await run.extract(user, conv, turn)  # Berlin is the fact listed first
    assert "1. The user lives in Berlin" in gen.prompts[-1]
    assert [d.action for d in fourth.decisions] == ["update"]
    assert "The user lives in Berlin" not in await live_facts(pool, user)
    assert "The user lives in Paris" in await live_facts(pool, user)
    assert await episodes(pool, user) == 4


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty output"),
        ('{"facts": [{"content": "The user', "invalid JSON"),
        ('{"facts": "none"}', "schema mismatch"),
        ('{"facts": [{"content": "x", "importance": 3, "replaces": null}]}', "schema mismatch"),
        (RuntimeError("engine down"), "engine error"),
        (facts(("Zorblax quantum vortex", 0.9)), "no fact grounded"),
    ],
)
async def test_unusable_output_is_recorded_and_episode_kept(
    pool: asyncpg.Pool,
    store: LongTermMemory,
    embedder: SentenceEmbedder,
    answer: str | Exception,
    reason: str,
) -> None:
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    turn = await say(pool, user, conv, "I adopted a cat called Luna.", "Lovely!")
    result = await extractor(pool, store, embedder, ScriptedGenerator(answer)).extract(
        user, conv, turn
    )
    assert result.status == "unusable"
    assert result.reason is not None and result.reason.startswith(reason)
    assert result.decisions == []
    assert await live_facts(pool, user) == []
    assert await episodes(pool, user) == 1


async def test_empty_fact_list_is_empty_not_unusable(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    turn = await say(pool, user, conv, "ok", "ok")
    gen = ScriptedGenerator('{"facts": []}', '{"facts": []}')
    run = extractor(pool, store, embedder, gen)
    assert (await run.extract(user, conv, turn)).status == "empty"
    await run.extract(user, conv, turn)  # a retried job stores the episode once
    assert await episodes(pool, user) == 1


class HeldGenerator:
    """Answers only once released: the model is still working when the user acts."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def generate_json(self, prompt_messages: object, schema: object, user_id: str) -> str:
        self.asked.set()
        await self.release.wait()
        return self.answer


@pytest.mark.parametrize("known", [None, "The user's sister lives in Porto"])
async def test_a_turn_replaced_while_its_extraction_runs_leaves_no_memory_behind(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder, known: str | None
) -> None:
    """The user edits the message while the model reads it: the episode stored before
    goes with the message, and the fact the model then finds (new, or a new version of
    a stored one) is not stored; the stored fact stays current."""
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    if known is not None:
        await store.add(user, "semantic", known, 0.7, [])
    turn = await say(pool, user, conv, "My sister Anna lives in Lisbon now.", "Lovely city!")
    replaces = 1 if known is not None else None
    gen = HeldGenerator(
        json.dumps(
            {
                "facts": [
                    {
                        "content": "The user's sister Anna lives in Lisbon",
                        "importance": 0.7,
                        "replaces": replaces,
                    }
                ]
            }
        )
    )
    job = asyncio.create_task(Extractor(pool, store, embedder, gen).extract(user, conv, turn))
    await asyncio.wait_for(gen.asked.wait(), 60)
    assert await episodes(pool, user) == 1  # stored before the model was asked
    edited = await MessageStore(pool).replace_tail(
        conv, user, turn[0].message_id, "user", "Never mind my sister. How are you?"
    )
    assert set(edited.removed_ids) == {turn[0].message_id, turn[1].message_id}
    gen.release.set()
    result = await asyncio.wait_for(job, 60)
    assert result.status == "sources_gone" and result.decisions == []
    assert await episodes(pool, user) == 0
    assert await live_facts(pool, user) == ([known] if known else [])
    kept = await pool.fetchval(
        "SELECT count(*) FROM memories WHERE user_id = $1 AND source_message_ids && $2::bigint[]",
        user,
        edited.removed_ids,
    )
    assert kept == 0


async def test_tiny_model_output_is_recorded_without_invented_facts(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder, tiny_gguf: Path
) -> None:
    engine = LlamaCppEngine(
        LlamaCppConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=2, n_threads=1)
    )
    await engine.start()
    try:
        user = await new_user(pool)
        conv = (await ConversationStore(pool).create(user)).id
        turn = await say(pool, user, conv, "My sister Anna lives in Oslo.", "Nice!")
        generator = EngineJSONGenerator(engine, max_tokens=96, deadline_s=60)
        result = await Extractor(pool, store, embedder, generator).extract(user, conv, turn)
    finally:
        await engine.close()
    assert await episodes(pool, user) == 1
    assert result.status in {"unusable", "empty", "applied"}
    if result.status == "unusable":
        assert result.reason
    stored = await live_facts(pool, user)
    assert len(stored) == sum(d.action == "add" for d in result.decisions)
    text = "\n".join(t.text for t in turn)
    assert all(is_grounded(fact, text) for fact in stored)


async def test_consolidation_merges_decays_and_summarizes(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    keep = await store.add(user, "semantic", "The user loves hiking in the mountains", 0.8, [])
    lose = await store.add(user, "semantic", "The user enjoys hiking in mountains", 0.4, [])
    other = await store.add(user, "semantic", "The user plays the cello", 0.5, [])
    for i in range(4):
        await store.add(user, "episodic", f"user: we talked about trip {i}", 0.5, [i], conv)
    await pool.execute(
        "UPDATE memories SET created_at = now() - interval '40 days' WHERE id = $1", other
    )
    await pool.execute(
        "UPDATE conversations SET updated_at = now() - interval '10 days' WHERE id = $1", conv
    )
    gen = ScriptedGenerator('{"summary": "The user planned four trips with the assistant."}')
    result = await Consolidator(pool, store, gen, ConsolidationConfig()).consolidate(user)
    assert (result.merged, result.decayed, result.summaries) == (1, 1, 1)
    assert await pool.fetchval("SELECT superseded_by FROM memories WHERE id = $1", lose) == keep
    assert await pool.fetchval(
        "SELECT importance FROM memories WHERE id = $1", other
    ) == pytest.approx(0.45)
    summary = await pool.fetchrow(
        "SELECT content, source_message_ids FROM memories WHERE content LIKE $1 || '%'",
        SUMMARY_PREFIX,
    )
    assert summary is not None and list(summary["source_message_ids"]) == [0, 1, 2, 3]
    again = await Consolidator(pool, store, ScriptedGenerator()).consolidate(user)
    assert (again.merged, again.summaries) == (0, 0)  # nothing left to merge or summarize


def test_extraction_frequency() -> None:
    every_third = JobsConfig(extract_every_n_turns=3)
    assert [should_extract(n, every_third) for n in range(1, 7)] == [
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    assert all(should_extract(n, JobsConfig()) for n in range(1, 5))


async def test_saq_job_round_trip(
    pool: asyncpg.Pool, store: LongTermMemory, embedder: SentenceEmbedder, redis_url: str
) -> None:
    user = await new_user(pool)
    conv = (await ConversationStore(pool).create(user)).id
    turn = await say(pool, user, conv, "I work as a nurse in Leeds.", "That's demanding work.")
    gen = ScriptedGenerator(facts(("The user works as a nurse in Leeds", 0.7)))
    config = JobsConfig(concurrency=2, retries=2, retry_delay_s=0.1)
    queue = create_queue(redis_url, name=f"test-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    deps = MemoryJobDeps(
        pool, Extractor(pool, store, embedder, gen), Consolidator(pool, store, None), config
    )
    worker = make_worker(queue, deps, cron=False)
    task = asyncio.create_task(worker.start())
    try:
        key = await enqueue_extraction(
            queue,
            config,
            user_id=user,
            conversation_id=conv,
            last_message_id=turn[-1].message_id,
            turn_number=1,
        )
        assert key is not None
        job = await queue.job(key)
        assert job is not None
        await job.refresh(until_complete=60)
        assert job.status == "complete", job.error
        result = ExtractionResult(**{**job.result, "decisions": []})
        assert result.status == "applied" and job.result["decisions"][0]["action"] == "add"
        assert await live_facts(pool, user) == ["The user works as a nurse in Leeds"]
    finally:
        await worker.stop()
        task.cancel()
        await queue.disconnect()


async def test_enqueue_failure_never_reaches_the_turn() -> None:
    queue = create_queue("redis://127.0.0.1:9/0")  # nothing listens there
    config = JobsConfig(enqueue_timeout_s=0.5)
    started = time.monotonic()
    key = await enqueue_extraction(
        queue,
        config,
        user_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        last_message_id=1,
        turn_number=1,
    )
    assert key is None
    assert time.monotonic() - started < 2.0
