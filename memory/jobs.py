"""Background memory jobs on a Redis-backed saq queue: extraction, summaries, consolidation.

- `create_queue` opens the queue; `make_worker` builds a worker with bounded
  concurrency that runs `extract_turn`, `summarise_conversation` (the rolling
  summary, `memory.summaries`), `consolidate_user` and the daily
  `consolidate_all` sweep (cron). The API process runs one in-process by
  default; `companion worker` processes run the same worker when scaled out.
- Jobs retry with exponential backoff (``retries``, ``retry_delay_s`` doubling
  up to ``retry_backoff_max_s``); a job that still fails is left in saq as
  ``failed`` with its error (saq's web UI and `Queue.info` show it), and the
  error is logged. An extraction whose model output is unusable is not a
  failure: the job succeeds with an `ExtractionResult` of status ``unusable``;
  likewise a summary (`SummaryResult`, and the failure is counted on its row).
- `enqueue_extraction` / `enqueue_summary` / `enqueue_consolidation` never raise and never wait
  longer than ``enqueue_timeout_s``: a chat turn must not block or fail on the
  queue. They return the job key, or None when skipped or not enqueued.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from saq import CronJob, Job, Queue, Worker
from saq.queue.redis import RedisQueue
from saq.types import Context

from memory.consolidation import Consolidator
from memory.episodes import Turn
from memory.extraction import Extractor
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


@dataclass(frozen=True, slots=True)
class MemoryJobDeps:
    """What the jobs need, built by the process that runs the worker."""

    pool: asyncpg.Pool
    extractor: Extractor
    consolidator: Consolidator
    config: JobsConfig
    summariser: Summariser | None = None  # None: summary jobs are skipped


class JobContext(Context, total=False):
    deps: MemoryJobDeps


def create_queue(redis_url: str, name: str = QUEUE_NAME) -> Queue:
    """A saq queue on ``redis_url`` (call ``await queue.connect()`` before use).

    Its own client, built here so that ``unix://`` URLs (the embedded Redis)
    work too, and so that the worker's blocking dequeues never hold
    connections of the session layer's pool.
    """
    return RedisQueue(Redis.from_url(redis_url), name=name)


def make_worker(queue: Queue, deps: MemoryJobDeps, cron: bool = True) -> Worker[JobContext]:
    """A worker running the memory jobs with ``deps.config.concurrency`` at a time."""

    async def startup(ctx: JobContext) -> None:
        ctx["deps"] = deps

    config = deps.config
    crons = [CronJob(consolidate_all, cron=config.consolidation_cron, timeout=config.timeout_s)]
    return Worker(
        queue,
        functions=[extract_turn, summarise_conversation, consolidate_user, consolidate_all],
        concurrency=config.concurrency,
        cron_jobs=crons if cron else None,
        startup=startup,
        after_process=_log_failure,
    )


async def extract_turn(
    ctx: JobContext, *, user_id: str, conversation_id: str, last_message_id: int, messages: int
) -> dict[str, Any]:
    """Extraction over the last ``messages`` messages up to ``last_message_id``."""
    deps = ctx["deps"]
    turns, occurred_at = await _load_turns(
        deps.pool, uuid.UUID(user_id), uuid.UUID(conversation_id), last_message_id, messages
    )
    if not turns:
        return {"status": "skipped", "reason": "no such messages"}
    result = await deps.extractor.extract(
        uuid.UUID(user_id), uuid.UUID(conversation_id), turns, occurred_at
    )
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


async def summarise_conversation(
    ctx: JobContext, *, user_id: str, conversation_id: str
) -> dict[str, Any]:
    """Fold the conversation's oldest unsummarised messages into its summary, if due."""
    summariser = ctx["deps"].summariser
    if summariser is None:
        return {"status": "skipped", "reason": "no summariser in this worker"}
    result = await summariser.summarise(uuid.UUID(user_id), uuid.UUID(conversation_id))
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


async def consolidate_user(ctx: JobContext, *, user_id: str) -> dict[str, Any]:
    """Merge, decay and summarize one user's memories."""
    result = await ctx["deps"].consolidator.consolidate(uuid.UUID(user_id))
    out: dict[str, Any] = msgspec.to_builtins(result)
    return out


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
    job = _job(
        extract_turn,
        config,
        key=f"extract:{conversation_id}:{last_message_id}",
        user_id=str(user_id),
        conversation_id=str(conversation_id),
        last_message_id=last_message_id,
        messages=2 * max(1, config.extract_every_n_turns),
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


async def _log_failure(ctx: JobContext) -> None:
    job = ctx.get("job")
    if job is not None and job.error:
        log.error(
            "memory job %s (%s) attempt %d failed: %s",
            job.function,
            job.key,
            job.attempts,
            job.error,
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
