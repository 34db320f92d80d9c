"""Idempotent retries and message limits of the chat turn, over HTTP."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from helpers import remember, signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sse_events import sse_events

from memory.buffer import ConversationBuffer
from memory.conversation_log import ConversationLog
from memory.messages import MessageStore
from memory.session import SessionStore
from server.app import create_app
from server.idempotency import IdempotencyStore
from server.settings import Settings

SSE = {"Accept": "text/event-stream"}


async def new_conversation(
    client: AsyncTestClient[Litestar], headers: dict[str, str]
) -> tuple[str, str]:
    conversation = (await client.post("/api/v1/conversations", json={}, headers=headers)).json()
    return conversation["id"], f"/api/v1/conversations/{conversation['id']}/messages"


async def test_a_retried_post_returns_the_same_turn(chat_client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(chat_client)
    _, url = await new_conversation(chat_client, headers)
    keyed = {**headers, "Idempotency-Key": "turn-1"}
    first = await chat_client.post(url, json={"content": "Hello there!"}, headers=keyed)
    assert first.status_code == 200, first.text
    assert "idempotent-replayed" not in first.headers

    again = await chat_client.post(url, json={"content": "Hello there!"}, headers=keyed)
    assert again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()

    streamed = await chat_client.post(
        url, json={"content": "Hello there!"}, headers={**keyed, **SSE}
    )
    events = sse_events(streamed.text)
    assert [name for name, _ in events] == ["meta", "token", "done"]
    assert events[1][1]["text"] == first.json()["reply"]
    assert events[2][1] == first.json()["done"]

    history = (await chat_client.get(url, headers=headers)).json()
    assert [m["role"] for m in history] == ["user", "assistant"]


async def test_a_key_names_one_request_of_one_user(chat_client: AsyncTestClient[Litestar]) -> None:
    alice, bob = await signed_in(chat_client), await signed_in(chat_client)
    _, url = await new_conversation(chat_client, alice)
    keyed = {**alice, "Idempotency-Key": "same"}
    assert (await chat_client.post(url, json={"content": "One"}, headers=keyed)).status_code == 200
    reused = await chat_client.post(url, json={"content": "Two"}, headers=keyed)
    assert reused.status_code == 422
    assert "Idempotency-Key" in reused.json()["error"]["message"]

    _, bob_url = await new_conversation(chat_client, bob)
    bobs = await chat_client.post(
        bob_url, json={"content": "One"}, headers={**bob, "Idempotency-Key": "same"}
    )
    assert bobs.status_code == 200 and "idempotent-replayed" not in bobs.headers
    bad = await chat_client.post(
        url, json={"content": "x"}, headers={**alice, "Idempotency-Key": ""}
    )
    assert bad.status_code == 400


async def test_a_retry_while_the_first_runs_is_409(
    chat_client: AsyncTestClient[Litestar], shared_redis: Redis
) -> None:
    headers = await signed_in(chat_client)
    me = (await chat_client.get("/api/v1/me", headers=headers)).json()["id"]
    conversation_id, url = await new_conversation(chat_client, headers)
    # another instance has claimed the key and is still generating
    store = IdempotencyStore(shared_redis, ttl_s=60)
    claim = await store.claim(uuid.UUID(me), "k", uuid.UUID(conversation_id), "Hi")
    running = await chat_client.post(
        url, json={"content": "Hi"}, headers={**headers, "Idempotency-Key": "k"}
    )
    assert running.status_code == 409
    assert (await chat_client.get(url, headers=headers)).json() == []
    await claim.release()  # it failed: the retry now runs
    retried = await chat_client.post(
        url, json={"content": "Hi"}, headers={**headers, "Idempotency-Key": "k"}
    )
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers


@pytest.fixture
async def short_messages(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    limited = dataclasses.replace(settings, max_message_chars=10)
    async with AsyncTestClient(create_app(limited)) as client:
        yield client


async def test_message_length_limit_is_configurable(
    short_messages: AsyncTestClient[Litestar], chat_client: AsyncTestClient[Litestar]
) -> None:
    headers = await signed_in(chat_client)
    _, url = await new_conversation(chat_client, headers)
    long = await chat_client.post(url, json={"content": "x" * 8001}, headers=headers)
    assert long.status_code == 400 and "8000 characters" in long.json()["error"]["message"]
    assert (await chat_client.get(url, headers=headers)).json() == []
    short_headers = await signed_in(short_messages)
    _, short_url = await new_conversation(short_messages, short_headers)
    refused = await short_messages.post(
        short_url, json={"content": "x" * 11}, headers=short_headers
    )
    assert refused.status_code == 400
    assert "10 characters" in refused.json()["error"]["message"]


async def test_regenerate_answers_an_unanswered_message_without_storing_it_again(
    chat_client: AsyncTestClient[Litestar], pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    """What the web UI's Retry calls after a turn failed or was stopped: sending the
    message again stored it twice (issue 16, finding 12)."""
    headers = await signed_in(chat_client)
    conversation_id, url = await new_conversation(chat_client, headers)
    regenerate = f"/api/v1/conversations/{conversation_id}/regenerate"
    nothing = await chat_client.post(regenerate, headers=headers)
    assert nothing.status_code == 409 and "no message" in nothing.json()["error"]["message"]
    me = (await chat_client.get("/api/v1/me", headers=headers)).json()
    # what a stopped or failed turn leaves: the message, stored, and no reply
    log = ConversationLog(MessageStore(pool), ConversationBuffer(shared_redis))
    stored = await log.append(
        uuid.UUID(conversation_id), uuid.UUID(me["id"]), "user", "Tell me about owls."
    )

    answered = await chat_client.post(regenerate, headers={**headers, **SSE})
    assert answered.status_code == 200, answered.text
    events = sse_events(answered.text)
    assert events[0][0] == "meta" and events[-1][0] == "done"
    assert events[-1][1]["user_message_id"] == stored.id
    history = (await chat_client.get(url, headers=headers)).json()
    assert [(m["role"], m["id"] == stored.id) for m in history] == [
        ("user", True),
        ("assistant", False),
    ]

    stranger = await signed_in(chat_client)
    assert (await chat_client.post(regenerate, headers=stranger)).status_code == 404


async def test_regenerate_replaces_an_answered_reply(
    chat_client: AsyncTestClient[Litestar], pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    """Regenerate on a reply the user did not like (issue 25): one reply stays, the new
    one, and the prompt it was made from is the first one's (the old reply is not in it)."""
    headers = await signed_in(chat_client)
    conversation_id, url = await new_conversation(chat_client, headers)
    first = (
        await chat_client.post(url, json={"content": "Tell me about owls."}, headers=headers)
    ).json()
    regenerate = f"/api/v1/conversations/{conversation_id}/regenerate"
    me = uuid.UUID((await chat_client.get("/api/v1/me", headers=headers)).json()["id"])
    # the episode extraction takes from the first exchange, quoting the old reply
    sources = [first["done"]["user_message_id"], first["done"]["assistant_message_id"]]
    episode = await remember(pool, me, uuid.UUID(conversation_id), "Tell me about owls.", sources)

    again = await chat_client.post(regenerate, headers=headers)

    assert again.status_code == 200, again.text
    done = again.json()["done"]
    assert done["user_message_id"] == first["done"]["user_message_id"]
    assert done["assistant_message_id"] > first["done"]["assistant_message_id"]
    assert episode not in again.json()["meta"]["memories_used"]
    assert done["usage"]["prompt_tokens"] == first["done"]["usage"]["prompt_tokens"]
    assert await pool.fetchval("SELECT count(*) FROM memories WHERE id = $1", episode) == 0
    history = (await chat_client.get(url, headers=headers)).json()
    assert [(m["role"], m["id"]) for m in history] == [
        ("user", done["user_message_id"]),
        ("assistant", done["assistant_message_id"]),
    ]
    assert history[1]["content"] == again.json()["reply"]
    assert history[1]["metadata"]["model"] == again.json()["meta"]["model"]
    log = ConversationLog(MessageStore(pool), ConversationBuffer(shared_redis))
    buffered = await log.history(uuid.UUID(conversation_id), me)  # what the next prompt reads
    assert [m.id for m in buffered.messages] == [m["id"] for m in history]


async def test_edit_replaces_the_last_message_and_answers_it_anew(
    chat_client: AsyncTestClient[Litestar], pool: asyncpg.Pool, shared_redis: Redis
) -> None:
    headers = await signed_in(chat_client)
    conversation_id, url = await new_conversation(chat_client, headers)
    for text in ("Hello!", "I had a nice day at the park."):
        assert (await chat_client.post(url, json={"content": text}, headers=headers)).is_success
    before = (await chat_client.get(url, headers=headers)).json()
    older, last = before[0]["id"], before[2]["id"]
    edit = f"{url}/{last}"

    not_last = await chat_client.patch(f"{url}/{older}", json={"content": "Hi"}, headers=headers)
    assert not_last.status_code == 409, not_last.text
    assert "last message" in not_last.json()["error"]["message"]
    assert (
        await chat_client.patch(f"{url}/{before[3]['id']}", json={"content": "Hi"}, headers=headers)
    ).status_code == 409
    assert (
        await chat_client.patch(edit, json={"content": "  "}, headers=headers)
    ).status_code == 400
    stranger = await signed_in(chat_client)
    assert (
        await chat_client.patch(edit, json={"content": "Hi"}, headers=stranger)
    ).status_code == 404
    assert (await chat_client.get(url, headers=headers)).json() == before  # refusals change nothing

    # the edited message is understood anew: here, it now asks for help
    edited = await chat_client.patch(
        edit, json={"content": "I want to kill myself."}, headers={**headers, **SSE}
    )

    assert edited.status_code == 200, edited.text
    events = sse_events(edited.text)
    assert events[0][0] == "meta" and events[-1][0] == "done"
    assert events[0][1]["route"] == "crisis"
    done = events[-1][1]
    after = (await chat_client.get(url, headers=headers)).json()
    assert after[:2] == before[:2]
    assert [(m["role"], m["id"]) for m in after[2:]] == [
        ("user", done["user_message_id"]),
        ("assistant", done["assistant_message_id"]),
    ]
    assert done["user_message_id"] > before[3]["id"]
    assert after[2]["content"] == "I want to kill myself."
    me = uuid.UUID((await chat_client.get("/api/v1/me", headers=headers)).json()["id"])
    log = ConversationLog(MessageStore(pool), ConversationBuffer(shared_redis))
    buffered = await log.history(uuid.UUID(conversation_id), me)
    assert [m.content for m in buffered.messages] == [m["content"] for m in after]


async def test_answering_the_last_message_anew_counts_it_once(
    chat_client: AsyncTestClient[Litestar], shared_redis: Redis
) -> None:
    """Regenerating or editing the last message routes it from the session as it was
    before that message: asking again does not spend the crisis window."""
    headers = await signed_in(chat_client)
    conversation_id, url = await new_conversation(chat_client, headers)
    me = uuid.UUID((await chat_client.get("/api/v1/me", headers=headers)).json()["id"])
    sessions, cid = SessionStore(shared_redis), uuid.UUID(conversation_id)

    async def remaining() -> int:
        state = await sessions.get(cid, me)
        assert state is not None
        return state.crisis_remaining

    said = await chat_client.post(url, json={"content": "I want to kill myself."}, headers=headers)
    assert said.json()["meta"]["route"] == "crisis"
    window = await remaining()
    after = await chat_client.post(url, json={"content": "Tell me about owls."}, headers=headers)
    assert after.json()["meta"]["route"] == "crisis"
    assert await remaining() == window - 1
    regenerate = f"/api/v1/conversations/{conversation_id}/regenerate"
    for _ in range(window):
        again = await chat_client.post(regenerate, headers=headers)
        assert again.status_code == 200, again.text
        assert again.json()["meta"]["route"] == "crisis"
    assert await remaining() == window - 1
    last = (await chat_client.get(url, headers=headers)).json()[-2]
    edited = await chat_client.patch(
        f"{url}/{last['id']}", json={"content": "Tell me about cats."}, headers={**headers, **SSE}
    )
    assert sse_events(edited.text)[0][1]["route"] == "crisis"
    assert await remaining() == window - 1
