"""Durable messages on a real PostgreSQL: append, ordering, paging, ownership."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from helpers import new_user, remember

from memory.errors import ConversationNotFoundError, ConversationOwnerError, TailMoved
from memory.messages import ConversationStore, MessageStore


async def test_append_returns_what_is_stored(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user, "friend", "hello")
    store = MessageStore(pool)

    first = await store.append(conversation.id, user, "user", "hi there", {"emotion": "joy"}, 3)
    second = await store.append(conversation.id, user, "assistant", "hello!")

    assert second.id > first.id
    assert first.created_at.tzinfo is not None
    assert (first.role, first.content, first.token_count) == ("user", "hi there", 3)
    assert first.metadata == {"emotion": "joy"}
    assert second.metadata == {}
    assert await store.recent(conversation.id, 10) == [first, second]


async def test_append_links_each_message_to_the_one_before(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)

    # Concurrent appends to one conversation take turns on the conversation row,
    # so the links form one chain with no gap and no fork.
    appended = await asyncio.gather(
        *(store.append_linked(conversation.id, user, "user", f"m{i}") for i in range(20))
    )

    previous = {a.message.id: a.previous_id for a in appended}
    ids = sorted(previous)
    assert previous[ids[0]] is None
    assert [previous[i] for i in ids[1:]] == ids[:-1]


async def test_paging_walks_back_through_every_message(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)
    stored = [await store.append(conversation.id, user, "user", f"m{i}") for i in range(23)]

    pages = []
    before: int | None = None
    while page := await store.page(conversation.id, before, 10):
        pages.append(page)
        before = page[0].id

    assert [len(p) for p in pages] == [10, 10, 3]
    assert [m for p in reversed(pages) for m in p] == stored
    assert await store.recent(conversation.id, 5) == stored[-5:]


async def test_other_conversations_do_not_leak_into_a_page(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversations = ConversationStore(pool)
    mine, other = await conversations.create(user), await conversations.create(user)
    store = MessageStore(pool)
    await store.append(other.id, user, "user", "elsewhere")
    kept = await store.append(mine.id, user, "user", "here")

    assert await store.recent(mine.id, 10) == [kept]


async def test_foreign_or_missing_conversation_is_refused(pool: asyncpg.Pool) -> None:
    owner, intruder = await new_user(pool), await new_user(pool)
    conversations = ConversationStore(pool)
    conversation = await conversations.create(owner)
    store = MessageStore(pool)

    with pytest.raises(ConversationOwnerError):
        await store.append(conversation.id, intruder, "user", "mine now")
    with pytest.raises(ConversationNotFoundError):
        await store.append(uuid.uuid4(), owner, "user", "nowhere")
    with pytest.raises(ConversationOwnerError):
        await conversations.get(conversation.id, intruder)

    assert await store.recent(conversation.id, 10) == []
    assert (await conversations.get(conversation.id, owner)).id == conversation.id


async def test_append_bumps_the_conversation_for_the_list(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversations = ConversationStore(pool)
    conversation = await conversations.create(user)

    await MessageStore(pool).append(conversation.id, user, "user", "hi")

    assert (await conversations.get(conversation.id, user)).updated_at > conversation.updated_at


async def test_head_reports_owner_and_newest_message(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)

    assert (await store.head(conversation.id)).last_message_id is None
    message = await store.append(conversation.id, user, "user", "hi")
    head = await store.head(conversation.id)
    assert (head.user_id, head.last_message_id) == (user, message.id)
    with pytest.raises(ConversationNotFoundError):
        await store.head(uuid.uuid4())


async def test_user_turns_count_only_this_conversations_user_messages(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversations = ConversationStore(pool)
    one = await conversations.create(user, "friend", None)
    other = await conversations.create(user, "friend", None)
    store = MessageStore(pool)
    assert await store.user_turns(one.id) == 0
    for i in range(3):
        await store.append(one.id, user, "user", f"message {i}")
        await store.append(one.id, user, "assistant", f"reply {i}")
    await store.append(other.id, user, "user", "elsewhere")
    assert await store.user_turns(one.id) == 3
    assert await store.user_turns(other.id) == 1


async def memory_ids(pool: asyncpg.Pool, user: uuid.UUID) -> set[int]:
    return {r["id"] for r in await pool.fetch("SELECT id FROM memories WHERE user_id = $1", user)}


async def test_a_new_reply_replaces_the_old_and_what_was_drawn_from_it(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)
    earlier = await store.append(conversation.id, user, "user", "I have a cat called Miso.")
    await store.append(conversation.id, user, "assistant", "Miso is a lovely name.")
    question = await store.append(conversation.id, user, "user", "Tell me about owls.")
    first = await store.append(conversation.id, user, "assistant", "Owls are fish.")
    panel = await store.append(conversation.id, user, "assistant", "Owls hoot at night.")
    kept = await remember(pool, user, conversation.id, "cat Miso", [earlier.id])
    await remember(pool, user, conversation.id, "owls are fish", [question.id, first.id])
    await remember(pool, user, conversation.id, "owls hoot", [panel.id])

    replaced = await store.replace_tail(
        conversation.id, user, question.id, "assistant", "Owls are birds.", {"persona": "sage"}
    )

    assert replaced.removed_ids == [first.id, panel.id]
    assert replaced.previous_id == question.id
    assert replaced.message.id > panel.id  # a new id: caches keyed on the newest id see it
    recent = await store.recent(conversation.id, 10)
    assert [(m.role, m.content) for m in recent[2:]] == [
        ("user", "Tell me about owls."),
        ("assistant", "Owls are birds."),
    ]
    assert recent[-1].metadata == {"persona": "sage"}
    assert await memory_ids(pool, user) == {kept}


async def test_an_edit_replaces_the_message_and_its_replies(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)
    await store.append(conversation.id, user, "user", "Hello.")
    hello = await store.append(conversation.id, user, "assistant", "Hi!")
    typo = await store.append(conversation.id, user, "user", "My dog is calld Rex.")
    await store.append(conversation.id, user, "assistant", "Calld?")

    edited = await store.replace_tail(
        conversation.id, user, typo.id, "user", "My dog is called Rex.", {"emotion": "joy"}
    )

    assert edited.previous_id == hello.id
    recent = await store.recent(conversation.id, 10)
    assert [m.content for m in recent] == ["Hello.", "Hi!", "My dog is called Rex."]
    assert recent[-1] == edited.message and edited.message.role == "user"


async def test_editing_the_first_message_renames_a_conversation_named_after_it(
    pool: asyncpg.Pool,
) -> None:
    user = await new_user(pool)
    conversations, store = ConversationStore(pool), MessageStore(pool)
    auto = await conversations.create(user)
    chosen = await conversations.create(user)
    for conversation in (auto, chosen):
        first = await store.append(conversation.id, user, "user", "Planning a trip to Rome")
        await store.append(conversation.id, user, "assistant", "Lovely!")
    await conversations.rename(chosen.id, user, "Holidays")
    assert (await conversations.get(auto.id, user)).title == "Planning a trip to Rome"

    first = (await store.recent(auto.id, 10))[0]
    await store.replace_tail(auto.id, user, first.id, "user", "Planning a trip to Lisbon")
    assert (await conversations.get(auto.id, user)).title == "Planning a trip to Lisbon"
    mine = (await store.recent(chosen.id, 10))[0]
    await store.replace_tail(chosen.id, user, mine.id, "user", "Planning a trip to Lisbon")
    assert (await conversations.get(chosen.id, user)).title == "Holidays"
    # a later message's edit leaves the title as it is
    await store.append(auto.id, user, "assistant", "Great choice.")
    later = await store.append(auto.id, user, "user", "Where should we eat?")
    await store.replace_tail(auto.id, user, later.id, "user", "Planning a trip to Porto")
    assert (await conversations.get(auto.id, user)).title == "Planning a trip to Lisbon"


async def test_only_the_last_exchange_can_be_replaced(pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    stranger = await new_user(pool)
    conversation = await ConversationStore(pool).create(user)
    store = MessageStore(pool)
    older = await store.append(conversation.id, user, "user", "first")
    await store.append(conversation.id, user, "assistant", "one")
    newer = await store.append(conversation.id, user, "user", "second")
    before = await store.recent(conversation.id, 10)

    with pytest.raises(TailMoved):  # a newer turn was stored after it
        await store.replace_tail(conversation.id, user, older.id, "assistant", "again")
    with pytest.raises(TailMoved):  # a reply's id is not a user message
        await store.replace_tail(conversation.id, user, before[1].id, "user", "edited")
    with pytest.raises(ConversationOwnerError):
        await store.replace_tail(conversation.id, stranger, newer.id, "assistant", "mine")
    with pytest.raises(ConversationNotFoundError):
        await store.replace_tail(uuid.uuid4(), user, newer.id, "assistant", "nowhere")

    assert await store.recent(conversation.id, 10) == before
