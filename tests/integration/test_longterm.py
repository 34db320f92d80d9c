"""LongTermMemory against a real PostgreSQL + pgvector and the real MiniLM embedder."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest
from helpers import new_user

from inference.embedder import SentenceEmbedder
from memory.errors import AlreadySuperseded, InvalidMemory, MemoryNotFound
from memory.longterm import CONTEXT_WEIGHT, LongTermMemory, RetrievalConfig
from memory.ranking import RankingConfig, estimate_tokens


@pytest.fixture
def store(pool: asyncpg.Pool, embedder: SentenceEmbedder) -> LongTermMemory:
    return LongTermMemory(pool, embedder)


async def new_conversation(pool: asyncpg.Pool, user_id: uuid.UUID) -> uuid.UUID:
    conversation_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO conversations (user_id) VALUES ($1) RETURNING id", user_id
    )
    return conversation_id


async def crowd_near(pool: asyncpg.Pool, vector: np.ndarray, users: int, each: int) -> None:
    """Other users' memories whose vectors sit right next to ``vector``: the hard case
    for a filtered HNSW scan, which meets all of them before any of ours."""
    rng = np.random.default_rng(7)
    rows = []
    for _ in range(users):
        owner = await new_user(pool)
        for n in range(each):
            noisy = vector + rng.normal(0, 0.05, vector.shape).astype(np.float32)
            rows.append((owner, f"other user memory {n}", noisy / np.linalg.norm(noisy)))
    await pool.executemany(
        "INSERT INTO memories (user_id, kind, content, embedding) VALUES ($1, 'episodic', $2, $3)",
        rows,
    )


async def query_vector(embedder: SentenceEmbedder, text: str) -> np.ndarray:
    return (await embedder.embed([text]))[0]


async def test_users_never_see_each_others_memories(
    store: LongTermMemory, pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    fact = "My sister is called Juniper and she lives in Lisbon."
    mine = await store.add(alice, "semantic", fact, 0.8, [])
    theirs = await store.add(bob, "semantic", fact, 0.8, [])
    await crowd_near(pool, await query_vector(embedder, "Where does my sister live?"), 20, 50)

    found = await store.retrieve(alice, "Where does my sister live?", k=10)

    assert [m.id for m in found] == [mine]
    assert theirs not in {m.id for m in await store.search(alice, "Juniper Lisbon")}
    assert {m.id for m in await store.list(alice)} == {mine}


async def test_superseding_fact_replaces_the_old_one(
    store: LongTermMemory, pool: asyncpg.Pool
) -> None:
    user = await new_user(pool)
    old = await store.add(user, "semantic", "The user lives in London.", 0.7, [1])
    new = await store.supersede(user, old, "The user moved to Paris and lives there now.")

    found = await store.retrieve(user, "Where does the user live?", k=5)

    assert [m.id for m in found] == [new]
    history = {m.id: m for m in await store.export(user)}
    assert history[old].superseded_by == new
    assert history[new].importance == pytest.approx(0.7)  # kept from the old version
    with pytest.raises(AlreadySuperseded):
        await store.supersede(user, old, "The user lives in Rome.")
    with pytest.raises(MemoryNotFound):
        await store.supersede(await new_user(pool), new, "Not yours to change.")


async def test_text_only_and_vector_only_matches_both_surface(
    store: LongTermMemory, pool: asyncpg.Pool
) -> None:
    user = await new_user(pool)
    # Distractors close in meaning to the first query, none with its rare keyword.
    for n in range(30):
        await store.add(
            user, "episodic", f"We talked about door codes and locks, part {n}.", 0.5, []
        )
    keyword = await store.add(user, "semantic", "Gate code: QZX-4471.", 0.5, [])
    # No word in common with "What is my pet's name?"; only the vector finds it.
    paraphrase = await store.add(user, "semantic", "Their dog is called Biscuit.", 0.5, [])

    by_text = await store.retrieve(user, "what was the QZX-4471 door code", k=3)
    by_vector = await store.retrieve(user, "What is my pet's name?", k=3)

    assert by_text[0].id == keyword
    assert by_vector[0].id == paraphrase


async def test_token_budget_and_k_are_respected(store: LongTermMemory, pool: asyncpg.Pool) -> None:
    user = await new_user(pool)
    for n in range(8):
        await store.add(
            user, "episodic", f"Hiking trip number {n}. " + "We walked far. " * 25, 0.5, []
        )

    found = await store.retrieve(user, "hiking trips", k=10, token_budget=250)
    assert 1 <= len(found) < 8
    assert sum(estimate_tokens(m.content) for m in found) <= 250
    assert len(await store.retrieve(user, "hiking trips", k=3, token_budget=100_000)) == 3
    assert await store.retrieve(user, "hiking trips", k=10, token_budget=10) == []


async def test_delete_only_the_owners_memory(store: LongTermMemory, pool: asyncpg.Pool) -> None:
    alice, mallory = await new_user(pool), await new_user(pool)
    memory_id = await store.add(alice, "semantic", "Alice is allergic to peanuts.", 0.9, [])

    assert await store.delete(mallory, memory_id) is False
    assert [m.id for m in await store.list(alice)] == [memory_id]
    assert await store.delete(alice, memory_id) is True
    assert await store.list(alice) == []


async def test_erase_leaves_nothing_of_the_user(store: LongTermMemory, pool: asyncpg.Pool) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    old = await store.add(alice, "semantic", "Alice works at the bakery.", 0.6, [])
    await store.supersede(alice, old, "Alice now works at the library.")
    await store.add(alice, "episodic", "Alice told a joke about owls.", 0.3, [])
    await store.add(bob, "episodic", "Bob likes owls too.", 0.3, [])

    assert await store.erase(alice) == 3
    assert await store.export(alice) == []
    assert await pool.fetchval("SELECT count(*) FROM memories WHERE user_id = $1", alice) == 0
    assert len(await store.export(bob)) == 1


async def test_conversation_filter_and_foreign_conversation(
    store: LongTermMemory, pool: asyncpg.Pool
) -> None:
    alice, bob = await new_user(pool), await new_user(pool)
    first, second = await new_conversation(pool, alice), await new_conversation(pool, alice)
    here = await store.add(alice, "episodic", "We planned the garden.", 0.5, [], first)
    await store.add(alice, "episodic", "We planned the garden again.", 0.5, [], second)

    found = await store.retrieve(alice, "garden plans", conversation_id=first)
    assert [m.id for m in found] == [here]
    with pytest.raises(MemoryNotFound):
        await store.add(bob, "episodic", "Sneaking in.", 0.5, [], first)
    with pytest.raises(InvalidMemory):
        await store.add(alice, "semantic", "Too important.", 1.5, [])


async def test_access_stats_are_written_off_the_read_path(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    store = LongTermMemory(pool, embedder, RetrievalConfig(access_flush_s=3600))
    memory_id = await store.add(user, "semantic", "The user's favourite tea is oolong.", 0.5, [])
    await store.retrieve(user, "favourite tea")
    await store.retrieve(user, "favourite tea")
    (memory,) = await store.list(user)
    assert (memory.access_count, memory.last_accessed_at) == (0, None)  # not on the read path

    await store.flush_access()
    (memory,) = await store.list(user)
    assert memory.id == memory_id
    assert memory.access_count == 2
    assert memory.last_accessed_at is not None


async def test_access_stats_are_written_in_the_background_and_at_close(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    store = LongTermMemory(pool, embedder, RetrievalConfig(access_flush_s=0.05))
    await store.add(user, "semantic", "The user plays the cello on Sundays.", 0.5, [])
    await store.retrieve(user, "cello")
    for _ in range(200):  # the background write, whenever it comes
        if (await store.list(user))[0].access_count == 1:
            break
        await asyncio.sleep(0.05)
    assert (await store.list(user))[0].access_count == 1

    closing = LongTermMemory(pool, embedder, RetrievalConfig(access_flush_s=3600))
    await closing.retrieve(user, "cello")
    await closing.close()
    assert (await store.list(user))[0].access_count == 2


async def test_text_candidates_are_the_same_through_the_gin_index(
    pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    """Small users are matched by scanning their rows, large ones through the GIN index:
    the two must rank alike (forced here with ``text_scan_max=0``)."""
    user = await new_user(pool)
    scan = LongTermMemory(pool, embedder)
    index = LongTermMemory(pool, embedder, RetrievalConfig(text_scan_max=0))
    texts = [
        "We hiked to the lake with my sister.",
        "My sister adopted a dog last spring.",
        "The lake was frozen when we went skating.",
        "Work was busy; the project deadline moved.",
        "My sister's dog chewed my hiking boots.",
        "Adoption papers for the dog came through.",
    ]
    for text in texts:
        await scan.add(user, "episodic", text, 0.5, [])
    await crowd_near(pool, await query_vector(embedder, "sister dog"), users=3, each=20)
    now = datetime.now(UTC)
    for query in ("my sister's dog", "frozen lake hike", "adoption", "nothing matches zzz"):
        by_scan = await scan.retrieve(user, query, k=6, now=now)
        assert by_scan == await index.retrieve(user, query, k=6, now=now), query


@pytest.mark.parametrize("exact_scan_max", [5000, 0], ids=["exact-scan", "iterative-hnsw"])
async def test_filtered_retrieval_is_exact_among_many_users(
    pool: asyncpg.Pool, embedder: SentenceEmbedder, exact_scan_max: int
) -> None:
    # One hop: this checks the candidate search; the second hop re-orders by design.
    one_hop = RankingConfig(feedback_top=0)
    config = RetrievalConfig(exact_scan_max=exact_scan_max, ranking=one_hop)
    store = LongTermMemory(pool, embedder, config)
    user = await new_user(pool)
    query = "a quiet evening reading by the fire"
    target = await query_vector(embedder, query)
    await crowd_near(pool, target, 40, 50)  # 2000 foreign rows, all nearer than ours
    rng = np.random.default_rng(11)
    vectors = rng.normal(0, 1, (25, target.shape[0])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [
        await store.add(user, "episodic", f"zz{n}", 0.5, [], embedding=vectors[n])
        for n in range(25)
    ]
    exact = {ids[i] for i in np.argsort(-(vectors @ target))[:10]}

    found = await store.retrieve(user, query, k=10)  # no text match: the vector order alone

    assert {m.id for m in found} == exact


async def test_an_episode_added_with_its_context_is_embedded_with_it(
    store: LongTermMemory, pool: asyncpg.Pool, embedder: SentenceEmbedder
) -> None:
    user = await new_user(pool)
    before = "Gina: I signed up for the regional dance competition in March!"
    episode = "Jon: Wow, I'm excited too! This is gonna be great!"
    with_context = await store.add(user, "episodic", episode, 0.5, [], context=before)
    alone = await store.add(user, "episodic", episode, 0.5, [])

    own, previous, question = await embedder.embed(
        [episode, before, "Who is excited about the dance competition?"]
    )
    expected = own + CONTEXT_WEIGHT * previous
    expected /= np.linalg.norm(expected)
    stored = {
        row["id"]: np.asarray(row["embedding"].to_numpy(), dtype=np.float32)
        for row in await pool.fetch("SELECT id, embedding FROM memories WHERE user_id = $1", user)
    }
    assert np.allclose(stored[with_context], expected, atol=1e-5)
    assert np.allclose(stored[alone], own / np.linalg.norm(own), atol=1e-5)
    # The follow-up now answers to the topic its lead-in named, and its text is unchanged.
    assert stored[with_context] @ question > stored[alone] @ question + 0.05
    found = await store.retrieve(user, "Who is excited about the dance competition?", k=1)
    assert [m.id for m in found] == [with_context]
    assert found[0].content == episode
