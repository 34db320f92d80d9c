"""The chat turn over HTTP: real PostgreSQL, Redis, MiniLM classifiers and the tiny model."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
from helpers import signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sse_events import sse_events


@pytest.fixture
async def client(chat_client: AsyncTestClient[Litestar]) -> AsyncTestClient[Litestar]:
    return chat_client


async def test_a_conversation_over_json_and_sse(client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"

    first = await client.post(url, json={"content": "Hi! I'm so happy today!"}, headers=headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["meta"]["route"] == "normal"
    assert body["meta"]["model"] == "tiny"  # the engine that answered
    assert body["meta"]["emotion"] == "joy"
    assert body["done"]["usage"]["completion_tokens"] > 0

    streamed = await client.post(
        url,
        json={"content": "Tell me something nice."},
        headers={**headers, "Accept": "text/event-stream", "Accept-Encoding": "gzip"},
    )
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert "content-encoding" not in streamed.headers  # token events are sent as they come
    events = sse_events(streamed.text)
    names = [name for name, _ in events]
    assert names[0] == "meta" and names[-1] == "done" and "token" in names
    done = events[-1][1]
    usage, timings = done["usage"], done["timings"]
    assert isinstance(usage, dict) and isinstance(timings, dict)
    steps = {"load", "emotion", "classify", "retrieve", "route", "fit", "store_user", "prepare"}
    steps.add("ttft")
    steps |= {"engine_ttft", "overhead", "store_reply", "total"}
    assert timings.keys() == {f"{step}_s" for step in steps}
    assert timings["prepare_s"] <= timings["ttft_s"] <= timings["total_s"]
    assert timings["overhead_s"] == pytest.approx(
        timings["ttft_s"] - timings["engine_ttft_s"], abs=1e-5
    )
    observed = REGISTRY.get_sample_value("companion:turn_step_seconds_count", {"step": "overhead"})
    assert observed is not None and observed >= 2
    # Reuse reaches up to where the first turn's volatile context (the emotion hint)
    # was inserted: the persona and everything before it come from the KV cache.
    assert body["done"]["usage"]["cached_prompt_tokens"] == 0
    assert 0 < usage["cached_prompt_tokens"] < usage["prompt_tokens"]

    history = (await client.get(url, headers=headers)).json()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert history[1]["metadata"]["route"] == "normal"
    # who answered, with which model, and how the message was understood (issue 25, item 2)
    assert history[1]["metadata"]["persona"] == body["meta"]["persona"] == "companion"
    assert history[1]["metadata"]["model"] == "tiny"
    assert history[1]["metadata"]["finish_reason"] == body["done"]["finish_reason"]
    assert body["done"]["finish_reason"] in ("stop", "length")
    assert history[0]["metadata"]["emotion"] == body["meta"]["emotion"] == "joy"


async def test_unverified_explicit_request_stays_normal(client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    reply = await client.post(url, json={"content": "Talk dirty to me."}, headers=headers)
    meta = reply.json()["meta"]
    assert meta["content_label"] == "explicit"
    assert meta["route"] == "normal"
    assert meta["needs_verification"] is True


async def test_turn_input_and_ownership_errors(client: AsyncTestClient[Litestar]) -> None:
    alice = await signed_in(client)
    mallory = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=alice)).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    assert (await client.post(url, json={"content": "   "}, headers=alice)).status_code == 400
    assert (await client.post(url, json={"content": ""}, headers=alice)).status_code == 400
    assert (await client.post(url, json={"content": "x" * 9000}, headers=alice)).status_code == 400
    json_headers = {**alice, "Content-Type": "application/json"}
    nul = await client.post(url, content=b'{"content": "hi\\u0000there"}', headers=json_headers)
    assert nul.status_code == 400, nul.text  # PostgreSQL text cannot hold NUL: not a 500
    assert "NUL" in nul.json()["error"]["message"]
    assert (await client.post(url, json={"content": "hi"}, headers=mallory)).status_code == 404
    assert (await client.get(url, headers=alice)).json() == []  # nothing was stored


async def test_memories_appear_after_the_background_job(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    headers = await signed_in(client)
    user_id = uuid.UUID((await client.get("/api/v1/me", headers=headers)).json()["id"])
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    sent = await client.post(url, json={"content": "My cat Miso loves tuna."}, headers=headers)
    done = sent.json()["done"]
    turn = {done["user_message_id"], done["assistant_message_id"]}

    # The in-process worker stores the turn as an episodic memory, whatever the
    # tiny model makes of the fact extraction.
    deadline = time.monotonic() + 60
    sources: set[int] = set()
    while time.monotonic() < deadline and not turn <= sources:
        rows = await pool.fetch(
            "SELECT unnest(source_message_ids) AS id FROM memories"
            " WHERE user_id = $1 AND kind = 'episodic'",
            user_id,
        )
        sources = {row["id"] for row in rows}
        await asyncio.sleep(0.25)
    assert turn <= sources  # both messages of the turn are remembered


async def test_verified_adult_reaches_the_explicit_route(client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    base = f"/api/v1/conversations/{conversation['id']}"
    adult = f"{time.gmtime().tm_year - 30}-01-15"
    verified = await client.post(
        f"{base}/verify-age", json={"date_of_birth": adult}, headers=headers
    )
    assert verified.json() == {"verified": True}
    reply = await client.post(
        f"{base}/messages", json={"content": "Talk dirty to me."}, headers=headers
    )
    meta = reply.json()["meta"]
    assert meta["route"] == "explicit"
    assert meta["persona"] == "companion-explicit"
    assert meta["needs_verification"] is False


async def test_a_stated_minor_age_flags_the_user_for_good(
    client: AsyncTestClient[Litestar],
) -> None:
    adult = f"{time.gmtime().tm_year - 30}-01-15"
    headers = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    base = f"/api/v1/conversations/{conversation['id']}"
    # Numbers that are not the writer's age flag nothing.
    await client.post(f"{base}/messages", json={"content": "I'm 15 minutes late"}, headers=headers)
    said = await client.post(
        f"{base}/messages", json={"content": 'My sister said "I\'m 14"'}, headers=headers
    )
    assert said.json()["meta"]["route"] == "normal"
    other = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    check = f"/api/v1/conversations/{other['id']}/verify-age"
    verified = await client.post(check, json={"date_of_birth": adult}, headers=headers)
    assert verified.json() == {"verified": True}

    await client.post(f"{base}/messages", json={"content": "im 14 years old"}, headers=headers)
    again = await client.post(f"{base}/verify-age", json={"date_of_birth": adult}, headers=headers)
    assert again.json() == {"verified": False}  # a later adult date does not help
    reply = await client.post(f"{base}/messages", json={"content": "can we sext"}, headers=headers)
    assert reply.json()["meta"]["route"] == "blocked"  # sexual content from a known minor


async def test_crisis_route_persists_after_self_harm(client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(client)
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    first = await client.post(url, json={"content": "I want to kill myself."}, headers=headers)
    assert first.json()["meta"]["route"] == "crisis"
    later = await client.post(
        url, json={"content": "What's the capital of France?"}, headers=headers
    )
    assert later.json()["meta"]["route"] == "crisis"
    assert later.json()["meta"]["content_label"] == "safe"
