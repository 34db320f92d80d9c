"""Background memory jobs on a Redis-backed saq queue: extraction, summaries, profile,
consolidation.

- `create_queue` opens the queue; `make_worker` builds a worker with bounded
  concurrency that runs `extract_turn`, `summarise_conversation` (the rolling
  summary, `memory.summaries`), `update_profile` (personality and goals,
  `memory.profile_update`; only when the deps have a profiler),
  `consolidate_user` and the daily `consolidate_all` sweep (cron). The API
  process runs one in-process by default; `companion worker` processes run
  the same worker when scaled out.
- Jobs retry with exponential backoff (``retries``, ``retry_delay_s`` doubling
  up to ``retry_backoff_max_s``); a job that still fails is left in saq as
  ``failed`` with its error (saq's web UI and `Queue.info` show it), and the
  error is logged. An extraction whose model output is unusable is not a
  failure: the job succeeds with an `ExtractionResult` of status ``unusable``;
  likewise a summary (`SummaryResult`, and the failure is counted on its row).
- `enqueue_extraction`, `enqueue_summary`, `enqueue_profile_update` and
  `enqueue_consolidation` never raise and never wait longer than
  ``enqueue_timeout_s``: a chat turn must not block or fail on the queue. They
  return the job key, or None when skipped or not enqueued.
- Every attempt is counted by outcome in ``companion:jobs_total`` (see
  `memory.metrics`); `read_queue` reads the queue's depth and the age of its
  oldest waiting job, which the server samples into gauges.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from saq import CronJob, Job, Queue, Status, Worker
from saq.queue.redis import RedisQueue
from saq.types import Context

from memory.consolidation import Consolidator
from memory.episodes import Turn
from memory.extraction import Extractor
from memory.metrics import QueueSample, default_memory_metrics
from memory.profile_update import ProfileUpdater
from memory.summaries import Summariser

log = logging.getLogger(__name__)

QUEUE_NAME = "companion-memory"


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """How memory jobs run (defaults: extraction after every turn, four at a time)."""

    extract_every_n_turns: int = 1  # 1: every turn; N: every Nth turn, covering the last N
    concurrency: int = 4
    retries: int = 3
    retry_delay_s: float = 1.0
    retry_backoff_max_s: float = 60.0
    timeout_s: int = 300  # one job, model included
    result_ttl_s: int = 86_400  # how long results and failures stay visible
    enqueue_timeout_s: float = 0.5
    consolidation_cron: str = "17 3 * * *"  # daily, 03:17 UTC
    # Profile: rule signals after every turn; the model's reading every N turns (0: never),
    # over the last N turns.
    profile_model_every_n_turns: int = 4


@dataclass(frozen=True, slots=True)
class MemoryJobDeps:
    """What the jobs need, built by the process that runs the worker."""

    pool: asyncpg.Pool
    extractor: Extractor
    consolidator: Consolidator
    config: JobsConfig
    profiler: ProfileUpdater | None = None
    summariser: Summariser | None = None  # None: summary jobs are skipped


class JobContext(Context, total=False):
    deps: MemoryJobDeps
    attempt_started_s: float  # perf_counter at the start of this attempt


def create_queue(redis_url: str, name: str = QUEUE_NAME) -> Queue:
    """A saq queue on ``redis_url`` (call ``await queue.connect()`` before use).

    Its own client, built here so that ``unix://`` URLs (the embedded Redis)
    work too, and so that the worker's blocking dequeues never hold
    connections of the session layer's pool.
    """
    return RedisQueue(Redis.from_url(redis_url), name=name)


async def erase_jobs(redis: Redis, names: list[str], queue_name: str = QUEUE_NAME) -> int:
    """Abort and delete every job of the queue whose key or payload holds one of ``names``
    (a user's id and their conversations' ids); return how many. A job's payload names
    its user and conversation, and its result (kept ``result_ttl_s``) can hold what was
    extracted. A job running right now is told to abort; its abort mark, named after
    the job, lapses within seconds."""
    queue = RedisQueue(redis, name=queue_name)
    erased = 0
    async for job_id in redis.scan_iter(match=f"saq:job:{queue_name}:*"):
        raw = await redis.get(job_id)
        if raw is None or not any(n.encode() in job_id or n.encode() in raw for n in names):
            continue
        job = queue.deserialize(raw)
        if job is not None:
            await queue.abort(job, "the user was erased", ttl=2)
        await redis.delete(job_id)
        erased += 1
    return erased


def make_worker(queue: Queue, deps: MemoryJobDeps, cron: bool = True) -> Worker[JobContext]:
    """A worker running the memory jobs with ``deps.config.concurrency`` at a time."""

    async def startup(ctx: JobContext) -> None:
        ctx["deps"] = deps

    config = deps.config
    crons = [CronJob(consolidate_all, cron=config.consolidation_cron, timeout=config.timeout_s)]
    return Worker(
        queue,
        functions=[
            extract_turn,
            summarise_conversation,
            update_profile,
            consolidate_user,
            consolidate_all,
        ],
        concurrency=config.concurrency,
        cron_jobs=crons if cron else None,
        startup=startup,
        before_process=_before_process,
        after_process=_after_process,
    )


async def extract_turn(
    ctx: JobContext, *, user_id: str, conversation_id: str, last_message_id: int, messages: int
) -> dict[str, Any]:
    """Extraction over the last ``messages`` messages up to ``last_message_id``."""
    deps = ctx["deps"]
    user, conversation = uuid.UUID(user_id), uuid.UUID(conversation_id)
    turns, occurred_at = await _load_turns(deps.pool, user, conversation, last_message_id, messages)
    if not turns:
        return _skipped("no such messages")
    return _builtins(await deps.extractor.extract(user, conversation, turns, occurred_at))


async def update_profile(
    ctx: JobContext,
    *,
    user_id: str,
    conversation_id: str,
    last_message_id: int,
    messages: int,
    use_model: bool,
) -> dict[str, Any]:
    """Personality and goal update over the last ``messages`` messages up to ``last_message_id``."""
    deps = ctx["deps"]
    if deps.profiler is None:
        return _skipped("no profiler in this worker")
    user = uuid.UUID(user_id)
    turns, _ = await _load_turns(
        deps.pool, user, uuid.UUID(conversation_id), last_message_id, messages
    )
    if not turns:
        return _skipped("no such messages")
    return _builtins(await deps.profiler.update(user, turns, use_model=use_model))


async def summarise_conversation(
    ctx: JobContext, *, user_id: str, conversation_id: str
) -> dict[str, Any]:
    """Fold the conversation's oldest unsummarised messages into its summary, if due."""
    summariser = ctx["deps"].summariser
    if summariser is None:
        return _skipped("no summariser in this worker")
    return _builtins(await summariser.summarise(uuid.UUID(user_id), uuid.UUID(conversation_id)))


async def consolidate_user(ctx: JobContext, *, user_id: str) -> dict[str, Any]:
    """Merge, decay and summarize one user's memories."""
    return _builtins(await ctx["deps"].consolidator.consolidate(uuid.UUID(user_id)))


async def consolidate_all(ctx: JobContext) -> dict[str, Any]:
    """The daily sweep: one `consolidate_user` job per user with memories."""
    deps = ctx["deps"]
    rows = await deps.pool.fetch("SELECT DISTINCT user_id FROM memories")
    queue = ctx["worker"].queue
    for row in rows:
        await queue.enqueue(_job(consolidate_user, deps.config, user_id=str(row["user_id"])))
    return {"enqueued": len(rows)}


def should_extract(turn_number: int, config: JobsConfig) -> bool:
    """Whether the ``turn_number``-th turn (1-based) of a conversation triggers extraction."""
    return turn_number >= 1 and turn_number % max(1, config.extract_every_n_turns) == 0


async def enqueue_extraction(
    queue: Queue,
    config: JobsConfig,
    *,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID,
    last_message_id: int,
    turn_number: int,
) -> str | None:
    """Queue extraction for this turn if due; never raises, never blocks the turn for long.

    A turn is a user message and the reply, so the job covers the last
    ``2 * extract_every_n_turns`` messages. The job key makes a repeated
    enqueue of the same turn a no-op.
    """
    if not should_extract(turn_number, config):
        return None
    messages = 2 * max(1, config.extract_every_n_turns)
    job = _turn_job(
        extract_turn, config, "extract", user_id, conversation_id, last_message_id, messages
    )
    return await _enqueue(queue, job, config)


async def enqueue_profile_update(
    queue: Queue,
    config: JobsConfig,
    *,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID,
    last_message_id: int,
    turn_number: int,
) -> str | None:
    """Queue this turn's personality and goal update; never raises, never blocks for long.

    Rule signals cover this turn; every ``profile_model_every_n_turns``-th turn
    the model also reads the last that many turns. The job key makes a
    repeated enqueue of the same turn a no-op.
    """
    every = config.profile_model_every_n_turns
    use_model = every > 0 and turn_number >= 1 and turn_number % every == 0
    messages = 2 * (every if use_model else 1)
    job = _turn_job(
        update_profile,
        config,
        "profile",
        user_id,
        conversation_id,
        last_message_id,
        messages,
        use_model=use_model,
    )
    return await _enqueue(queue, job, config)


async def enqueue_summary(
    queue: Queue,
    config: JobsConfig,
    *,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID,
    last_message_id: int,
) -> str | None:
    """Queue a summary check after a turn; never raises, never blocks the turn for long.

    Cheap when nothing is due (one indexed query); the model runs only when the
    messages after the summary outgrow three quarters of the buffer.
    """
    job = _job(
        summarise_conversation,
        config,
        key=f"summary:{conversation_id}:{last_message_id}",
        user_id=str(user_id),
        conversation_id=str(conversation_id),
    )
    return await _enqueue(queue, job, config)


async def enqueue_consolidation(queue: Queue, config: JobsConfig, user_id: uuid.UUID) -> str | None:
    """Queue consolidation of one user now; never raises."""
    return await _enqueue(queue, _job(consolidate_user, config, user_id=str(user_id)), config)


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def _builtins(result: msgspec.Struct) -> dict[str, Any]:
    """A job's result as saq stores it (plain JSON types)."""
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


def _turn_job(
    function: Any,
    config: JobsConfig,
    kind: str,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID,
    last_message_id: int,
    messages: int,
    **kwargs: Any,
) -> Job:
    """A job over the last ``messages`` messages up to ``last_message_id``, keyed by the
    turn so that a repeated enqueue of the same turn is a no-op."""
    return _job(
        function,
        config,
        key=f"{kind}:{conversation_id}:{last_message_id}",
        user_id=str(user_id),
        conversation_id=str(conversation_id),
        last_message_id=last_message_id,
        messages=messages,
        **kwargs,
    )


def _job(function: Any, config: JobsConfig, key: str | None = None, **kwargs: Any) -> Job:
    job = Job(
        function=function.__qualname__,
        kwargs=kwargs,
        timeout=config.timeout_s,
        retries=config.retries,
        retry_delay=config.retry_delay_s,
        retry_backoff=config.retry_backoff_max_s,
        ttl=config.result_ttl_s,
    )
    if key is not None:
        job.key = key
    return job


async def _enqueue(queue: Queue, job: Job, config: JobsConfig) -> str | None:
    try:
        queued = await asyncio.wait_for(queue.enqueue(job), config.enqueue_timeout_s)
    except Exception as exc:  # the chat turn goes on; the failure is visible in the log
        log.error("could not enqueue memory job %s: %s: %s", job.function, type(exc).__name__, exc)
        return None
    return queued.key if queued is not None else job.key


# The status a job is left in after one attempt, as counted: a job back in the
# queue is being retried.
_OUTCOMES = {
    Status.COMPLETE: "complete",
    Status.FAILED: "failed",
    Status.ABORTED: "aborted",
    Status.QUEUED: "retried",
}


async def _before_process(ctx: JobContext) -> None:
    ctx["attempt_started_s"] = time.perf_counter()  # saq clears job.started on a retry


async def _after_process(ctx: JobContext) -> None:
    job = ctx.get("job")
    if job is None:
        return
    outcome = _OUTCOMES.get(job.status, str(job.status.value))
    started = ctx.get("attempt_started_s")
    duration_s = time.perf_counter() - started if started is not None else None
    queue = ctx["worker"].queue.name
    default_memory_metrics().job_done(queue, job.function, outcome, duration_s)
    if job.error:
        log.error(
            "memory job %s (%s) attempt %d failed: %s",
            job.function,
            job.key,
            job.attempts,
            job.error,
        )


async def read_queue(queue: Queue) -> QueueSample:
    """Count the queue's jobs and age its oldest waiting one (saq's Redis layout)."""
    queued, active = await queue.count("queued"), await queue.count("active")
    incomplete = await queue.count("incomplete")  # every job not finished, in any state
    oldest_age_s = 0.0
    if isinstance(queue, RedisQueue) and queued:
        # saq pushes at the tail and workers take from the head: the head is the oldest.
        head = await queue.redis.lindex(queue.namespace("queued"), 0)
        job_id = head.decode() if isinstance(head, bytes) else head
        job = await queue.job(queue.job_key_from_id(job_id)) if job_id else None
        if job is not None and job.queued:
            oldest_age_s = max(0.0, time.time() - job.queued / 1000)
    return QueueSample(
        queue.name, queued, active, max(incomplete - queued - active, 0), oldest_age_s
    )


_TURNS_SQL = """
SELECT id, role, content, created_at FROM (
    SELECT id, role, content, created_at FROM messages
    WHERE conversation_id = $2 AND user_id = $1 AND id <= $3 AND role <> 'system'
    ORDER BY id DESC LIMIT $4
) newest ORDER BY id
"""


async def _load_turns(
    pool: asyncpg.Pool,
    user_id: uuid.UUID,
    conversation_id: uuid.UUID,
    last_message_id: int,
    messages: int,
) -> tuple[list[Turn], Any]:
    """The turns from PostgreSQL (the source of truth) and when the last one was said."""
    rows = await pool.fetch(_TURNS_SQL, user_id, conversation_id, last_message_id, messages)
    turns = [Turn(r["id"], r["role"], r["content"]) for r in rows]
    return turns, (rows[-1]["created_at"] if rows else None)
