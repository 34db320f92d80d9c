"""Metrics and the dashboard after real activity: tiny model, MiniLM, PostgreSQL, Redis.

Every check compares a scrape of ``/metrics`` (or the stats endpoint) taken
before the activity with one taken after it: the registry is process-wide, so
absolute values would include earlier tests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from saq import Job

from inference.config import ChatEngineConfig
from memory.accounts import AccountStore
from memory.config import RedisConfig
from memory.embedded import EmbeddedRedis
from memory.jobs import QUEUE_NAME, create_queue, read_queue
from memory.metrics import MemoryMetrics, QueueSample
from server.app import create_app
from server.settings import Settings

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]
MESSAGES = "/api/v1/conversations/{conversation_id}/messages"  # the route, not the URL
DEADLINE_S = 60.0  # for background work to show; a guard, not a timing assertion


def engine_config(tiny_gguf: Path) -> ChatEngineConfig:
    return ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)


async def scrape(client: AsyncTestClient[Litestar]) -> Scrape:
    text = (await client.get("/metrics")).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(scraped: Scrape, name: str, **labels: str) -> float:
    """The sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in scraped.items() if n == name and wanted <= series)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen within {DEADLINE_S:.0f} s")
        await asyncio.sleep(0.2)


@pytest.fixture
async def own_redis() -> AsyncIterator[str]:
    """A Redis of this test's own: the job queue holds only what the test puts there."""
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        server = EmbeddedRedis(Path(directory))
        try:
            yield server.start()
        finally:
            server.stop()


async def signed_in(client: AsyncTestClient[Litestar]) -> dict[str, str]:
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    await client.post("/api/v1/auth/register", json=credentials)
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


async def test_a_streamed_turn_moves_http_understanding_and_job_metrics(
    settings: Settings, tiny_gguf: Path
) -> None:
    full = dataclasses.replace(settings, chat_engine=engine_config(tiny_gguf), embedder="minilm")
    async with AsyncTestClient(create_app(full), timeout=120) as client:
        headers = await signed_in(client)
        conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
        before = await scrape(client)

        streamed = await client.post(
            f"/api/v1/conversations/{conversation['id']}/messages",
            json={"content": "I'm so happy today, I got the job!"},
            headers={**headers, "Accept": "text/event-stream"},
        )
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert "event: done" in streamed.text
        after = await scrape(client)

        route = {"path": MESSAGES, "method": "POST", "status_code": "200"}
        for name in ("companion_requests_total", "companion_request_duration_seconds_count"):
            assert total(after, name, **route) == total(before, name, **route) + 1, name
        for name, labels in (
            ("companion:classifier_latency_seconds_count", {"classifier": "emotion"}),
            ("companion:classifier_latency_seconds_count", {"classifier": "content"}),
            ("companion:embedding_latency_seconds_count", {}),
            ("companion:retrieval_latency_seconds_count", {}),
        ):
            assert total(after, name, **labels) > total(before, name, **labels), (name, labels)

        # The turn queued a memory extraction; the in-process worker runs it.
        jobs = "companion:jobs_total"
        done = {"function": "extract_turn", "status": "complete"}

        async def extraction_counted() -> bool:
            return total(await scrape(client), jobs, **done) > total(before, jobs, **done)

        await eventually(extraction_counted, "the extraction job's completion")


async def test_queue_depth_and_the_oldest_jobs_age_are_read_from_redis(own_redis: str) -> None:
    queue = create_queue(own_redis, name=f"q-{uuid.uuid4().hex[:8]}")
    await queue.connect()
    try:
        assert await read_queue(queue) == QueueSample(queue.name, 0, 0, 0, 0.0)
        await queue.enqueue(Job("extract_turn", kwargs={"n": 1}))
        await queue.enqueue(Job("extract_turn", kwargs={"n": 2}))
        await queue.enqueue(Job("consolidate_user", scheduled=int(time.time()) + 3600))
        sample = await read_queue(queue)
    finally:
        await queue.disconnect()
    assert (sample.queued, sample.active, sample.scheduled) == (2, 0, 1)
    assert sample.oldest_age_s > 0
    registry = CollectorRegistry()
    MemoryMetrics(registry).update_queue(sample)
    labels = {"queue": queue.name, "state": "queued"}
    assert registry.get_sample_value("companion:job_queue_depth", labels) == 2


async def test_the_app_samples_the_queue_and_counts_retries_and_failures(
    settings: Settings, tiny_gguf: Path, own_redis: str
) -> None:
    own = dataclasses.replace(
        settings,
        redis=RedisConfig(url=own_redis),
        chat_engine=engine_config(tiny_gguf),
        embedder="minilm",
    )
    async with AsyncTestClient(create_app(own), timeout=120) as client:
        before = await scrape(client)
        queue = create_queue(own_redis)
        await queue.connect()
        try:
            # Missing arguments: the job raises on every attempt, is retried once, then fails.
            await queue.enqueue(Job("extract_turn", kwargs={}, retries=2, retry_delay=0.0))
            # Far in the future: stays scheduled for the sampler to see (beside the daily cron).
            await queue.enqueue(Job("consolidate_user", scheduled=int(time.time()) + 3600))
            scheduled = (await read_queue(queue)).scheduled
        finally:
            await queue.disconnect()
        assert scheduled >= 1

        jobs = "companion:jobs_total"

        async def failed_after_a_retry() -> bool:
            now = await scrape(client)
            return all(
                total(now, jobs, function="extract_turn", status=status)
                > total(before, jobs, function="extract_turn", status=status)
                for status in ("retried", "failed")
            )

        async def scheduled_sampled() -> bool:
            now = await scrape(client)
            depth = total(now, "companion:job_queue_depth", queue=QUEUE_NAME, state="scheduled")
            return depth == scheduled

        await eventually(failed_after_a_retry, "a retried, then failed job")
        await eventually(scheduled_sampled, "the scheduled job in the queue gauge")
        after = await scrape(client)
        name = "companion:job_duration_seconds_count"
        attempts = total(after, name, function="extract_turn")
        assert attempts >= total(before, name, function="extract_turn") + 2


@pytest.fixture
async def keyed_client(
    settings: Settings, tiny_gguf: Path
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """Keys required (as in production), with the tiny model."""
    keyed = dataclasses.replace(
        settings, chat_engine=engine_config(tiny_gguf), api_keys_required=True
    )
    async with AsyncTestClient(create_app(keyed), timeout=120) as client:
        yield client


async def test_dashboard_page_is_static_with_a_strict_policy(
    keyed_client: AsyncTestClient[Litestar],
) -> None:
    page = await keyed_client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert '<script src="/dashboard/dashboard.js"' in page.text
    assert "<script>" not in page.text  # no inline code
    script = await keyed_client.get("/dashboard/dashboard.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert "/api/v1/admin/stats" in script.text
    style = await keyed_client.get("/dashboard/dashboard.css")
    assert style.headers["content-type"].startswith("text/css")


async def test_stats_are_for_administrators_and_follow_real_generation(
    keyed_client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    accounts = AccountStore(pool)  # the app's database, from the test's event loop
    admin = {"Authorization": f"Bearer {(await accounts.create_key('boss', admin=True)).key}"}
    user = {"Authorization": f"Bearer {(await accounts.create_key('someone')).key}"}
    url = "/api/v1/admin/stats"
    assert (await keyed_client.get(url)).status_code == 401
    assert (await keyed_client.get(url, headers=user)).status_code == 403

    first = await keyed_client.get(url, headers=admin)
    assert first.status_code == 200
    before = first.json()["totals"]

    reply = await keyed_client.post(
        "/v1/chat/completions",
        json={
            "model": "tiny",
            "messages": [{"role": "user", "content": "Hello there"}],
            "max_tokens": 8,
        },
        headers=admin,
    )
    assert reply.status_code == 200, reply.text
    generated = reply.json()["usage"]["completion_tokens"]
    assert generated > 0

    report: dict[str, Any] = {}

    async def generation_published() -> bool:
        # The engine's counters reach the registry once a second.
        report.update((await keyed_client.get(url, headers=admin)).json())
        return bool(report["totals"]["generated_tokens"] >= before["generated_tokens"] + generated)

    await eventually(generation_published, "the generated tokens in the stats")
    assert report["totals"]["finished_requests"] > before["finished_requests"]
    chart = report["points"]
    assert any(p["tokens_per_s"] > 0 for p in chart)
    assert any(p["ttft_s"][0] is not None and p["e2e_s"][0] is not None for p in chart)
    assert all(p["kv_usage"] is not None for p in chart)
    newest = chart[-1]["t"]
    later = (await keyed_client.get(url, params={"since": newest}, headers=admin)).json()
    assert all(p["t"] > newest for p in later["points"])
