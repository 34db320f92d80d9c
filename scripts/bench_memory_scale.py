"""Retrieval at scale: 100k memories of 1,000 users, latency and recall against exact search.

    python scripts/bench_memory_scale.py [--users 1000] [--per-user 100] [--queries 200]
                                         [--json PATH]

Loads the memories into a fresh embedded PostgreSQL (COPY, random normalised
vectors so loading is quick; texts are varied template sentences), then for
random users runs `LongTermMemory.retrieve` with a real MiniLM query
embedding (latency includes the embedding) and compares the user's vector
candidates with an exact numpy search over that user's vectors. Both vector
paths are measured: the default (exact scan for users with few memories) and
the HNSW iterative-scan path (``exact_scan_max=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np

from inference.embedder import SentenceEmbedder
from memory.config import DatabaseConfig
from memory.db import create_pool
from memory.embedded import EmbeddedPostgres
from memory.longterm import LongTermMemory, RetrievalConfig
from memory.migrate import migrate_url

_SUBJECTS = ["my sister", "my dog", "our team", "my landlord", "grandma", "the neighbour", "Alex"]
_VERBS = ["talked about", "planned", "complained about", "laughed at", "remembered", "visited"]
_OBJECTS = [
    "the trip to Lisbon",
    "a pottery class",
    "the new job",
    "a hiking weekend",
    "the concert",
    "moving house",
    "a cooking disaster",
    "the marathon",
    "exam week",
]
QUERIES = [
    "what did my sister plan",
    "tell me about the trip",
    "how was the concert",
    "anything about the marathon",
    "what happened with the landlord",
]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--per-user", type=int, default=100)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", type=Path)
    return p.parse_args()


def text(rng: random.Random) -> str:
    return f"user: {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"


def vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def load(pool: asyncpg.Pool, users: int, per_user: int) -> dict[uuid.UUID, np.ndarray]:
    """COPY the memories in; return each user's (id, vector) matrix keyed by user."""
    rng, nrng = random.Random(0), np.random.default_rng(0)
    ids = [uuid.uuid4() for _ in range(users)]
    await pool.executemany(
        "INSERT INTO users (id, username) VALUES ($1, $2)", [(u, u.hex) for u in ids]
    )
    vecs = vectors(users * per_user, nrng)
    rows = [
        (ids[i // per_user], "episodic", text(rng), vecs[i], 0.5, [i]) for i in range(len(vecs))
    ]
    columns = ["user_id", "kind", "content", "embedding", "importance", "source_message_ids"]
    async with pool.acquire() as conn:
        for start in range(0, len(rows), 2000):  # HNSW inserts: batches stay under the timeout
            batch = rows[start : start + 2000]
            await conn.copy_records_to_table("memories", records=batch, columns=columns)
        await conn.execute("ANALYZE memories")
    return {u: vecs[i * per_user : (i + 1) * per_user] for i, u in enumerate(ids)}


async def run(args: argparse.Namespace, pool: asyncpg.Pool) -> dict[str, Any]:
    t0 = time.perf_counter()
    by_user = await load(pool, args.users, args.per_user)
    load_s = time.perf_counter() - t0
    embedder = SentenceEmbedder()
    results: dict[str, Any] = {"memories": args.users * args.per_user, "load_s": load_s}
    for name, exact_max in (("exact-scan", 5000), ("hnsw-iterative", 0)):
        store = LongTermMemory(pool, embedder, RetrievalConfig(exact_scan_max=exact_max))
        results[name] = await measure(store, pool, embedder, by_user, args)
    embedder.close()
    return results


async def measure(
    store: LongTermMemory,
    pool: asyncpg.Pool,
    embedder: SentenceEmbedder,
    by_user: dict[uuid.UUID, np.ndarray],
    args: argparse.Namespace,
) -> dict[str, float]:
    rng = random.Random(1)
    users = list(by_user)
    latencies, recalls = [], []
    for i in range(args.queries):
        user, query = rng.choice(users), QUERIES[i % len(QUERIES)]
        start = time.perf_counter()
        await store.retrieve(user, query, k=args.k)
        latencies.append((time.perf_counter() - start) * 1000)
        recalls.append(await recall(store, pool, embedder, user, by_user[user], query, args.k))
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
        "recall": float(np.mean(recalls)),
    }


async def recall(
    store: LongTermMemory,
    pool: asyncpg.Pool,
    embedder: SentenceEmbedder,
    user: uuid.UUID,
    mine: np.ndarray,
    query: str,
    k: int,
) -> float:
    """Share of the exact top-k (numpy, by the user's vectors) in the store's vector top-k."""
    q = (await embedder.embed([query]))[0]
    exact = {int(i) for i in np.argsort(-(mine @ q))[:k]}
    async with pool.acquire() as conn, conn.transaction():
        rows = await store._vector_candidates(conn, user, q, None, k)  # the path under test
        ids = [r["id"] for r in rows]
        sims = await conn.fetch(
            "SELECT source_message_ids[1] AS i FROM memories WHERE id = ANY($1)", ids
        )
    found = {int(r["i"]) % len(mine) for r in sims}  # global index -> index within the user
    return len(exact & found) / len(exact)


def report(results: dict[str, Any]) -> None:
    print(f"memories: {results['memories']}  load: {results['load_s']:.1f} s")
    print(f"{'vector path':<16}{'p50 ms':>10}{'p95 ms':>10}{'recall':>9}")
    for name in ("exact-scan", "hnsw-iterative"):
        r = results[name]
        print(f"{name:<16}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['recall']:>9.3f}")


async def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory(prefix="cmpb-", dir="/tmp") as directory:
        server = EmbeddedPostgres(Path(directory))
        url = server.start()
        try:
            await migrate_url(url)
            pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=4), url)
            try:
                results = await run(args, pool)
            finally:
                await pool.close()
        finally:
            server.stop()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
