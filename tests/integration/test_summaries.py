"""The durable rolling summary on real PostgreSQL and Redis: folds, failures, Redis loss, jobs.

The model's answers are scripted (`ScriptedGenerator`, a fake of the LLM edge);
the failure path also runs the real tiny random GGUF model through llama.cpp.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from helpers import ScriptedGenerator, new_user
from redis.asyncio import Redis

from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from memory.buffer import BufferConfig, ConversationBuffer
from memory.conversation_log import ConversationLog
from memory.jobs import JobsConfig, MemoryJobDeps, create_queue, enqueue_summary, make_worker
from memory.messages import ConversationStore, MessageStore, StoredMessage
from memory.summaries import Summariser, SummaryConfig, SummaryStore, parse_summary
from server.memory_jobs import EngineJSONGenerator

SIZE = 8  # buffer size: a fold is due above 6 unsummarised messages and leaves 4


def answer(text: str) -> str:
    return json.dumps({"summary": text})


async def chat(
    log: ConversationLog, conversation: uuid.UUID, user: uuid.UUID, turns: int, start: int = 0
) -> list[StoredMessage]:
    said = []
    for i in range(start, start + turns):
        said.append(await log.append(conversation, user, "user", f"Question {i} about Lisbon"))
        said.append(await log.append(conversation, user, "assistant", f"Answer {i} on Lisbon"))
    return said


async def setup(pool: asyncpg.Pool, redis: Redis) -> tuple[ConversationLog, uuid.UUID, uuid.UUID]:
    user = await new_user(pool)
    conversation = (await ConversationStore(pool).create(user)).id
    log = ConversationLog(MessageStore(pool), ConversationBuffer(redis, BufferConfig(size=SIZE)))
    return log, conversation, user


def summariser(pool: asyncpg.Pool, generator: object) -> Summariser:
    return Summariser(pool, generator, SummaryConfig(buffer_size=SIZE))  # type: ignore[arg-type]


def test_fold_thresholds_follow_the_buffer_size() -> None:
    assert (SummaryConfig(buffer_size=40).keep, SummaryConfig(buffer_size=40).due_above) == (20, 30)
    assert (SummaryConfig(buffer_size=8).keep, SummaryConfig(buffer_size=8).due_above) == (4, 6)
    assert (SummaryConfig(buffer_size=2).keep, SummaryConfig(buffer_size=2).due_above) == (1, 1)


async def test_fold_is_due_only_past_three_quarters_of_the_buffer(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 3)  # 6 messages: not yet
    generator = ScriptedGenerator(answer("The user asked about Lisbon four times."))
    run = summariser(pool, generator)
    assert (await run.summarise(user, conversation)).status == "not_due"
    assert generator.prompts == []

    said += await chat(log, conversation, user, 1, start=3)  # 8 > 6: fold the oldest 4
    result = await run.summarise(user, conversation)
    assert (result.status, result.folded, result.through_id) == ("applied", 4, said[3].id)
    assert "Question 0 about Lisbon" in generator.prompts[0]
    assert "Question 2 about Lisbon" not in generator.prompts[0]  # the kept tail is not folded

    history = await log.history(conversation, user)
    assert history.summary is not None
    assert history.summary.text == "The user asked about Lisbon four times."
    assert history.messages == said[4:]  # each message once: summarised or verbatim


async def test_next_fold_starts_from_the_previous_summary(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    generator = ScriptedGenerator(
        answer("The user asked two questions about Lisbon."),
        answer("The user asked four questions about Lisbon, then two more."),
    )
    run = summariser(pool, generator)
    await run.summarise(user, conversation)
    said += await chat(log, conversation, user, 2, start=4)
    result = await run.summarise(user, conversation)
    assert (result.status, result.through_id) == ("applied", said[7].id)
    assert "The user asked two questions about Lisbon." in generator.prompts[1]
    assert "Question 3 about Lisbon" in generator.prompts[1]
    assert "Question 1 about Lisbon" not in generator.prompts[1]  # already in the summary
    assert "Question 4 about Lisbon" not in generator.prompts[1]  # the kept tail


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not json",
        '{"facts": []}',
        answer("short"),
        answer("Completely unrelated gibberish zzzz qqqq."),
        RuntimeError("engine down"),
    ],
)
async def test_unusable_answer_is_recorded_and_the_summary_kept(
    pool: asyncpg.Pool, shared_redis: Redis, bad: str | Exception
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    good = "The user asked two questions about Lisbon."
    await summariser(pool, ScriptedGenerator(answer(good))).summarise(user, conversation)
    said += await chat(log, conversation, user, 2, start=4)

    result = await summariser(pool, ScriptedGenerator(bad)).summarise(user, conversation)

    assert result.status == "unusable" and result.reason
    assert result.through_id == said[3].id  # nothing folded
    row = await SummaryStore(pool).row(conversation)
    assert row is not None
    assert (row.summary, row.through_message_id, row.failures) == (good, said[3].id, 1)
    assert row.last_failure == result.reason and row.last_failure_at is not None
    history = await log.history(conversation, user)
    assert history.summary is not None and history.summary.text == good
    assert history.messages == said[4:]


async def test_first_fold_failing_leaves_no_summary(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    result = await summariser(pool, ScriptedGenerator("{}")).summarise(user, conversation)
    assert result.status == "unusable" and result.through_id == 0
    assert await SummaryStore(pool).get(conversation) is None
    history = await log.history(conversation, user)
    assert history.summary is None and history.messages == said


async def test_summary_survives_redis_loss_and_a_stale_copy_is_replaced(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    await summariser(pool, ScriptedGenerator(answer("Two Lisbon questions so far."))).summarise(
        user, conversation
    )
    before = await log.history(conversation, user)

    buffer = ConversationBuffer(shared_redis)
    await shared_redis.delete(*[k for k in await shared_redis.keys(f"*{conversation}*")])
    assert await log.history(conversation, user) == before

    # A copy left behind from before a fold (e.g. Redis restored from an old file).
    await shared_redis.delete(*[k for k in await shared_redis.keys(f"*{conversation}*")])
    await buffer.set_summary(conversation, "an outdated summary", said[1].id)
    assert await log.history(conversation, user) == before


async def test_concurrent_folds_from_one_start_cannot_both_win(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = (await ConversationStore(pool).create(user)).id
    store = SummaryStore(pool)
    assert await store.save(conversation, user, "first fold of the talk", 10, 0)
    assert not await store.save(conversation, user, "a rival fold of the talk", 12, 0)
    assert await store.save(conversation, user, "second fold of the talk", 20, 10)
    assert await store.get(conversation) is not None
    assert not await store.save(conversation, await new_user(pool), "not the owner's", 30, 20)


def test_parse_summary_normalises_whitespace() -> None:
    assert (
        parse_summary(answer("  The user   likes\ntea a lot. "), 10) == "The user likes tea a lot."
    )


async def test_summary_job_round_trip(
    pool: asyncpg.Pool, shared_redis: Redis, redis_url: str
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    generator = ScriptedGenerator(answer("The user asked two questions about Lisbon."))
    config = JobsConfig(concurrency=1, retries=1, retry_delay_s=0.1)
    queue = create_queue(redis_url, name=f"test-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    deps = MemoryJobDeps(pool, None, None, config, summariser=summariser(pool, generator))  # type: ignore[arg-type]
    worker = make_worker(queue, deps, cron=False)
    task = asyncio.create_task(worker.start())
    try:
        key = await enqueue_summary(
            queue, config, user_id=user, conversation_id=conversation, last_message_id=said[-1].id
        )
        assert key is not None
        job = await queue.job(key)
        assert job is not None
        await job.refresh(until_complete=60)
        assert job.status == "complete", job.error
        assert job.result["status"] == "applied" and job.result["through_id"] == said[3].id
    finally:
        await worker.stop()
        task.cancel()
        await queue.disconnect()
    history = await log.history(conversation, user)
    assert history.summary is not None and history.messages == said[4:]


async def test_tiny_model_never_leaves_an_empty_or_invented_summary(
    pool: asyncpg.Pool, shared_redis: Redis, tiny_gguf: Path
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 4)
    engine = LlamaCppEngine(
        LlamaCppConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=2, n_threads=1)
    )
    await engine.start()
    try:
        generator = EngineJSONGenerator(engine, max_tokens=96, deadline_s=60)
        result = await summariser(pool, generator).summarise(user, conversation)
    finally:
        await engine.close()
    row = await SummaryStore(pool).row(conversation)
    assert row is not None
    if result.status == "unusable":  # what a random model gives, almost surely
        assert result.reason and row.last_failure == result.reason and row.summary is None
        assert (await log.history(conversation, user)).messages == said
    else:
        assert result.status == "applied" and row.summary and len(row.summary) >= 20


async def test_turns_not_to_be_remembered_are_never_shown_to_the_model(
    pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    log, conversation, user = await setup(pool, shared_redis)
    said = await chat(log, conversation, user, 1)
    said.append(await log.append(conversation, user, "user", "A message routing blocked"))
    said.append(
        await log.append(
            conversation, user, "assistant", "A blocked reply", {"store_in_memory": False}
        )
    )
    said += await chat(log, conversation, user, 2, start=1)  # 8 messages: fold the oldest 4
    generator = ScriptedGenerator(answer("The user asked one question about Lisbon."))
    result = await summariser(pool, generator).summarise(user, conversation)
    assert (result.status, result.through_id, result.folded) == ("applied", said[3].id, 2)
    assert "Question 0 about Lisbon" in generator.prompts[0]
    assert "blocked" not in generator.prompts[0]
    assert (await log.history(conversation, user)).messages == said[4:]

    # A fold of nothing but such turns moves the summary on without asking the model.
    for _ in range(2):
        said.append(await log.append(conversation, user, "user", "Another blocked message"))
        said.append(
            await log.append(
                conversation, user, "assistant", "Another reply", {"store_in_memory": False}
            )
        )
    # pending: Q1 A1 Q2 A2 + four blocked = 8: folds Q1 A1 Q2 A2
    second = ScriptedGenerator(answer("The user asked three questions about Lisbon."))
    assert (await summariser(pool, second).summarise(user, conversation)).through_id == said[7].id
    said += await chat(log, conversation, user, 2, start=3)
    # pending: four blocked + Q3 A3 Q4 A4 = 8: the oldest four are all blocked
    silent = ScriptedGenerator()  # any question to the model would fail here
    result = await summariser(pool, silent).summarise(user, conversation)
    assert (result.status, result.through_id, result.folded) == ("applied", said[11].id, 0)
    history = await log.history(conversation, user)
    assert history.summary is not None
    assert history.summary.text == "The user asked three questions about Lisbon."
    assert history.messages == said[12:]
