"""Personas and conversations over HTTP: creation, listing, paging, and no leaks across users."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from memory.messages import MessageStore
from server.app import create_app
from server.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def user(client: AsyncTestClient[Litestar]) -> tuple[dict[str, str], str]:
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    registered = await client.post("/api/v1/auth/register", json=credentials)
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}, registered.json()["id"]


async def test_personas_hide_route_only_ones(client: AsyncTestClient[Litestar]) -> None:
    headers, _ = await user(client)
    ids = {p["id"] for p in (await client.get("/api/v1/personas", headers=headers)).json()}
    assert {"companion", "mentor", "playful", "listener"} <= ids
    assert not ids & {"companion-explicit", "crisis-support", "refusal"}
    assert (await client.get("/api/v1/personas")).status_code == 401


async def test_create_list_and_page(client: AsyncTestClient[Litestar], pool: asyncpg.Pool) -> None:
    headers, user_id = await user(client)
    created = await client.post(
        "/api/v1/conversations", json={"persona": "mentor", "title": "Running"}, headers=headers
    )
    assert created.status_code == 201
    conversation = created.json()
    assert conversation["persona"] == "mentor"
    listed = (await client.get("/api/v1/conversations", headers=headers)).json()
    assert [c["id"] for c in listed] == [conversation["id"]]

    store = MessageStore(pool)  # the app's database, through this test's own pool
    for i in range(5):
        await store.append(uuid.UUID(conversation["id"]), uuid.UUID(user_id), "user", f"m{i}")
    url = f"/api/v1/conversations/{conversation['id']}/messages"
    newest = (await client.get(url, params={"limit": 3}, headers=headers)).json()
    assert [m["content"] for m in newest] == ["m2", "m3", "m4"]
    older = (await client.get(url, params={"before": newest[0]["id"]}, headers=headers)).json()
    assert [m["content"] for m in older] == ["m0", "m1"]


async def test_bad_input_is_400(client: AsyncTestClient[Litestar]) -> None:
    headers, _ = await user(client)
    unknown = await client.post("/api/v1/conversations", json={"persona": "nope"}, headers=headers)
    hidden = await client.post(
        "/api/v1/conversations", json={"persona": "crisis-support"}, headers=headers
    )
    long_title = await client.post(
        "/api/v1/conversations", json={"title": "x" * 201}, headers=headers
    )
    assert unknown.status_code == hidden.status_code == long_title.status_code == 400


async def test_other_users_conversations_are_404(client: AsyncTestClient[Litestar]) -> None:
    alice, _ = await user(client)
    mallory, _ = await user(client)
    created = (await client.post("/api/v1/conversations", json={}, headers=alice)).json()
    url = f"/api/v1/conversations/{created['id']}/messages"
    theirs = await client.get(url, headers=mallory)
    missing = await client.get(f"/api/v1/conversations/{uuid.uuid4()}/messages", headers=mallory)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["message"] == missing.json()["error"]["message"]
    assert (await client.get("/api/v1/conversations", headers=mallory)).json() == []


async def test_undecodable_messages_are_400_and_store_nothing(
    client: AsyncTestClient[Litestar],
) -> None:
    headers, _ = await user(client)
    created = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{created['id']}/messages"
    sent = {**headers, "Content-Type": "application/json"}
    for body in (b'{"content": "caf\xe9 \xff"}', b'{"content": "unterminated', b"[1, 2]"):
        refused = await client.post(url, content=body, headers=sent)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["code"] == "bad_request"
    assert (await client.get(url, headers=headers)).json() == []
    openai = await client.post("/v1/chat/completions", content=b'{"model": "\xff"}', headers=sent)
    assert openai.status_code == 400
    assert openai.json()["error"]["message"] == "The request body is not valid UTF-8."


async def test_undecodable_bodies_get_the_services_own_words(
    client: AsyncTestClient[Litestar],
) -> None:
    """The wording is ours, not the JSON decoder's (which changes between its releases)."""
    headers, _ = await user(client)
    sent = {**headers, "Content-Type": "application/json"}
    created = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{created['id']}/messages"
    cases = [
        (url, b'{"content": "caf\xe9"}', "the request body is not valid UTF-8"),
        (url, b'{"content": "unterminated', "the request body is not valid JSON"),
        ("/v1/chat/completions", b"\xff\xfe", "The request body is not valid UTF-8."),
        ("/v1/chat/completions", b'{"model": tru', "The request body is not valid JSON."),
    ]
    for path, body, message in cases:
        refused = await client.post(path, content=body, headers=sent)
        assert refused.status_code == 400, body
        assert refused.json()["error"]["message"] == message, body
    assert (await client.get(url, headers=headers)).json() == []


async def test_well_formed_json_of_the_wrong_shape_is_named_as_such(
    client: AsyncTestClient[Litestar],
) -> None:
    """JSON that parses but does not fit (an unknown field, a wrong type) is not called
    malformed: the answer names the field, and nothing is stored or created."""
    headers, _ = await user(client)
    sent = {**headers, "Content-Type": "application/json"}
    created = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{created['id']}/messages"
    cases = [
        (url, b'{"content": 5}', "`content`", "Expected `str`"),
        (
            "/api/v1/auth/register",
            b'{"username": "shape", "password": "long enough pass", "nickname": 1}',
            None,
            "unknown field `nickname`",
        ),
        ("/v1/chat/completions", b'{"model": "m", "messages": 3}', None, "messages"),
    ]
    for path, body, key, words in cases:
        refused = await client.post(path, content=body, headers=sent)
        assert refused.status_code == 400, body
        answer = refused.json()["error"]
        assert "not valid JSON" not in answer["message"], body
        assert words in str(answer), answer
        if key is not None:
            assert key.strip("`") in str(answer.get("details")), answer
    assert (await client.get(url, headers=headers)).json() == []


async def test_untitled_conversations_are_named_after_their_first_message(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    headers, user_id = await user(client)
    created = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    assert created["title"] is None
    store = MessageStore(pool)
    first = "  Planning   a trip to Lisbon in May with my sister, who has never flown before\nok"
    for content in (first, "And a second message that is not the title"):
        await store.append(uuid.UUID(created["id"]), uuid.UUID(user_id), "user", content)
    listed = (await client.get("/api/v1/conversations", headers=headers)).json()
    # the first line, whitespace collapsed, cut at a word near 60 characters
    assert listed[0]["title"] == "Planning a trip to Lisbon in May with my sister, who has…"
    named = (
        await client.post("/api/v1/conversations", json={"title": "Mine"}, headers=headers)
    ).json()
    await store.append(uuid.UUID(named["id"]), uuid.UUID(user_id), "user", "hello")
    titles = {
        c["id"]: c["title"]
        for c in (await client.get("/api/v1/conversations", headers=headers)).json()
    }
    assert titles[named["id"]] == "Mine"  # a title given is kept


async def test_rename_and_delete_only_ones_own_conversations(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    headers, user_id = await user(client)
    other, _ = await user(client)
    created = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    url = f"/api/v1/conversations/{created['id']}"
    await MessageStore(pool).append(uuid.UUID(created["id"]), uuid.UUID(user_id), "user", "hi")
    await shared_redis.set(f"companion:test:{created['id']}", "session state of it")

    renamed = await client.patch(url, json={"title": "  Cats \n and  dogs "}, headers=headers)
    assert renamed.status_code == 200 and renamed.json()["title"] == "Cats and dogs"
    for bad in ({"title": "   "}, {"title": "x" * 201}, {"name": "x"}, {}):
        assert (await client.patch(url, json=bad, headers=headers)).status_code == 400, bad
    # another user's conversation does not exist for them: 404, and nothing changes
    assert (await client.patch(url, json={"title": "Mine now"}, headers=other)).status_code == 404
    assert (await client.delete(url, headers=other)).status_code == 404
    listed = (await client.get("/api/v1/conversations", headers=headers)).json()
    assert [c["title"] for c in listed] == ["Cats and dogs"]

    assert (await client.delete(url, headers=headers)).status_code == 204
    assert (await client.get("/api/v1/conversations", headers=headers)).json() == []
    assert (await client.get(f"{url}/messages", headers=headers)).status_code == 404
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM messages WHERE conversation_id = $1", uuid.UUID(created["id"])
        )
        == 0
    )
    assert await shared_redis.exists(f"companion:test:{created['id']}") == 0
    assert (await client.delete(url, headers=headers)).status_code == 404
