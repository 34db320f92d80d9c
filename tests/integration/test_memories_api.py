"""/api/v1/memories and verify-age over HTTP (no model needed)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import asyncpg
import numpy as np
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from memory.longterm import LongTermMemory
from server.app import create_app
from server.settings import Settings


class NoEmbedder:
    dimensions = 384

    async def embed(self, texts: object) -> np.ndarray:
        raise AssertionError("not expected to embed")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def signed_in(client: AsyncTestClient[Litestar]) -> tuple[dict[str, str], uuid.UUID]:
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    user_id = (await client.post("/api/v1/auth/register", json=credentials)).json()["id"]
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}, uuid.UUID(user_id)


async def test_list_search_and_forget(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    headers, user_id = await signed_in(client)
    other_headers, _ = await signed_in(client)
    store = LongTermMemory(pool, NoEmbedder())  # type: ignore[arg-type]
    vector = np.ones(384, dtype=np.float32) / np.sqrt(384)
    tea = await store.add(user_id, "semantic", "Loves green tea", 0.7, [1], embedding=vector)
    await store.add(user_id, "semantic", "Runs every Sunday", 0.6, [2], embedding=vector)

    listed = (await client.get("/api/v1/memories", headers=headers)).json()
    assert {m["content"] for m in listed} == {"Loves green tea", "Runs every Sunday"}
    found = await client.get("/api/v1/memories", params={"query": "tea"}, headers=headers)
    assert [m["id"] for m in found.json()] == [tea]
    assert (await client.get("/api/v1/memories", headers=other_headers)).json() == []

    assert (
        await client.delete(f"/api/v1/memories/{tea}", headers=other_headers)
    ).status_code == 404
    assert (await client.delete(f"/api/v1/memories/{tea}", headers=headers)).status_code == 204
    left = (await client.get("/api/v1/memories", headers=headers)).json()
    assert [m["content"] for m in left] == ["Runs every Sunday"]
    assert (await client.get("/api/v1/memories")).status_code == 401


def years_ago(years: int) -> str:
    today = dt.datetime.now(dt.UTC).date()
    return today.replace(year=today.year - years, day=min(today.day, 28)).isoformat()


async def test_age_verification_and_the_permanent_minor_flag(
    client: AsyncTestClient[Litestar],
) -> None:
    adult, _ = await signed_in(client)
    teen, _ = await signed_in(client)
    for headers, dob, verified in ((adult, years_ago(30), True), (teen, years_ago(15), False)):
        conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
        url = f"/api/v1/conversations/{conversation['id']}/verify-age"
        response = await client.post(url, json={"date_of_birth": dob}, headers=headers)
        assert response.status_code == 200
        assert response.json() == {"verified": verified}

    # Once a minor, always a minor: a later adult date of birth does not verify.
    conversation = (await client.post("/api/v1/conversations", json={}, headers=teen)).json()
    url = f"/api/v1/conversations/{conversation['id']}/verify-age"
    again = await client.post(url, json={"date_of_birth": years_ago(40)}, headers=teen)
    assert again.json() == {"verified": False}

    future = await client.post(url, json={"date_of_birth": "2999-01-01"}, headers=teen)
    assert future.status_code == 400
    strangers = await client.post(url, json={"date_of_birth": years_ago(30)}, headers=adult)
    assert strangers.status_code == 404


async def test_a_memory_written_by_the_user_is_stored_embedded_and_theirs(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """What the web UI's Undo after Forget sends: the memory saved again, searchable by
    meaning (so embedded), for this user only; bad input changes nothing."""
    with_embedder = dataclasses.replace(settings, embedder="minilm")
    async with AsyncTestClient(create_app(with_embedder), timeout=120) as client:
        headers, user_id = await signed_in(client)
        other, _ = await signed_in(client)
        for bad in (
            {"content": "   "},
            {"content": ""},
            {"content": "x" * 1001},
            {"content": "ok", "kind": "secret"},
            {"content": "ok", "importance": 2},
            {"content": "ok", "user_id": str(uuid.uuid4())},
        ):
            refused = await client.post("/api/v1/memories", json=bad, headers=headers)
            assert refused.status_code == 400, bad
        body = {"content": "Has a  cat called Miso", "kind": "semantic", "importance": 0.8}
        created = await client.post("/api/v1/memories", json=body, headers=headers)
        assert created.status_code == 201
        listed = (await client.get("/api/v1/memories", headers=headers)).json()
        assert [(m["id"], m["content"]) for m in listed] == [
            (created.json()["id"], "Has a cat called Miso")
        ]
        assert listed[0]["importance"] == pytest.approx(0.8)
        assert (await client.get("/api/v1/memories", headers=other)).json() == []
    owner, embedded = await pool.fetchrow(
        "SELECT user_id, embedding IS NOT NULL FROM memories WHERE id = $1", created.json()["id"]
    )
    assert owner == user_id and embedded
