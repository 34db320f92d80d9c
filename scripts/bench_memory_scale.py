"""Retrieval at scale: 100k memories of 1,000 users, latency and recall against exact search.

    python scripts/bench_memory_scale.py [--users 1000] [--per-user 100] [--queries 200]
                                         [--json PATH] [--data-dir DIR]

Loads the memories into a fresh embedded PostgreSQL (COPY, random normalised
vectors so loading is quick; texts are varied template sentences), then for
random users runs `LongTermMemory.retrieve` with a real MiniLM query
embedding (latency includes the embedding) and compares the user's vector
candidates with an exact numpy search over that user's vectors. Both vector
paths are measured: the default (exact scan for users with few memories) and
the HNSW iterative-scan path (``exact_scan_max=0``), and then also the text
search through the GIN index (``text_scan_max=0``), as a user with more than
5000 memories would get. The query embedding is also timed alone, and the
default path once more without it (query vectors computed beforehand), so the
table shows where the time goes; and that once more without the second hop
(``no-embedding-one-hop``), for what the hop costs.

Run it from the repository root with ``PYTHONPATH=.`` when the virtual
environment's editable install points at another checkout.

The HNSW index is built once after the COPY rather than row by row (the same
index, as the schema defines it; pgvector builds it much faster in bulk).
``--data-dir DIR`` keeps the database in DIR and reuses it when it already
holds the memories (for profiling; the default is a temporary directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from memory.ranking import RankingConfig
from memory.retrieval import vector_candidates

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


# The default paths (a user of 100 memories is scanned), the vector search forced
# through the HNSW index, and both vector and text search forced through their
# indexes (what a user with more than 5000 memories gets).
PATHS = {
    "exact-scan": RetrievalConfig(),
    "hnsw-iterative": RetrievalConfig(exact_scan_max=0),
    "all-indexes": RetrievalConfig(exact_scan_max=0, text_scan_max=0),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--per-user", type=int, default=100)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--json", type=Path)
    p.add_argument("--data-dir", type=Path, help="keep (and reuse) the database here")
    return p.parse_args()


def text(rng: random.Random) -> str:
    return f"user: {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"


def vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, 384)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


async def load(pool: asyncpg.Pool, users: int, per_user: int) -> dict[uuid.UUID, np.ndarray]:
    """COPY the memories in (unless already there); return each user's vectors by user."""
    rng, nrng = random.Random(0), np.random.default_rng(0)
    ids = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(users)]
    vecs = vectors(users * per_user, nrng)
    by_user = {u: vecs[i * per_user : (i + 1) * per_user] for i, u in enumerate(ids)}
    if await pool.fetchval("SELECT count(*) FROM memories") == len(vecs):
        return by_user  # --data-dir with the same data already loaded
    await pool.executemany(
        "INSERT INTO users (id, username) VALUES ($1, $2)", [(u, u.hex) for u in ids]
    )
    rows = [
        (ids[i // per_user], "episodic", text(rng), vecs[i], 0.5, [i]) for i in range(len(vecs))
    ]
    columns = ["user_id", "kind", "content", "embedding", "importance", "source_message_ids"]
    async with pool.acquire() as conn:
        definition = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_idx'"
        )
        await conn.execute("DROP INDEX memories_embedding_idx")
        for start in range(0, len(rows), 10_000):
            batch = rows[start : start + 10_000]
            await conn.copy_records_to_table("memories", records=batch, columns=columns)
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute(definition, timeout=3600)
        await conn.execute("VACUUM ANALYZE memories", timeout=3600)
    return by_user


async def run(args: argparse.Namespace, pool: asyncpg.Pool) -> dict[str, Any]:
    t0 = time.perf_counter()
    by_user = await load(pool, args.users, args.per_user)
    load_s = time.perf_counter() - t0
    embedder = SentenceEmbedder()
    results: dict[str, Any] = {"memories": args.users * args.per_user, "load_s": load_s}
    results["embedding"] = await measure_embedding(embedder, args.queries)
    for name, config in PATHS.items():
        store = LongTermMemory(pool, embedder, config)
        results[name] = await measure(store, pool, embedder, by_user, args)
        await store.close()
    # The default path once more with the query vectors computed beforehand: the
    # database and ranking part alone.
    precomputed = await Precomputed.of(embedder, QUERIES)
    store = LongTermMemory(pool, precomputed)
    results["no-embedding"] = await measure(store, pool, embedder, by_user, args)
    await store.close()
    # ... and without the second hop (the candidates' vectors are still fetched):
    # what re-scoring the candidates against the moved query costs.
    one_hop = RetrievalConfig(ranking=RankingConfig(feedback_top=0))
    store = LongTermMemory(pool, precomputed, one_hop)
    results["no-embedding-one-hop"] = await measure(store, pool, embedder, by_user, args)
    await store.close()
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


class Precomputed:
    """An embedder that answers from vectors computed beforehand (the database part alone)."""

    dimensions = 384

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self._vectors = vectors

    @classmethod
    async def of(cls, embedder: SentenceEmbedder, texts: list[str]) -> Precomputed:
        return cls(dict(zip(texts, await embedder.embed(texts), strict=True)))

    async def embed(self, texts: Any) -> np.ndarray:
        return np.stack([self._vectors[t] for t in texts])


async def measure_embedding(embedder: SentenceEmbedder, queries: int) -> dict[str, float]:
    """The query embedding alone, as `retrieve` does it (one text per call)."""
    latencies = []
    for i in range(queries):
        start = time.perf_counter()
        await embedder.embed([QUERIES[i % len(QUERIES)] + f" {i}"])
        latencies.append((time.perf_counter() - start) * 1000)
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))],
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
        rows = await vector_candidates(conn, store.config, user, q, None, k)  # the path under test
        ids = [r["id"] for r in rows]
        sims = await conn.fetch(
            "SELECT source_message_ids[1] AS i FROM memories WHERE id = ANY($1)", ids
        )
    found = {int(r["i"]) % len(mine) for r in sims}  # global index -> index within the user
    return len(exact & found) / len(exact)


def report(results: dict[str, Any]) -> None:
    print(f"memories: {results['memories']}  load: {results['load_s']:.1f} s")
    print(f"{'vector path':<16}{'p50 ms':>10}{'p95 ms':>10}{'recall':>9}")
    for name in PATHS:
        r = results[name]
        print(f"{name:<16}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['recall']:>9.3f}")
    for name in ("no-embedding", "no-embedding-one-hop"):
        r = results[name]
        print(f"{name:<16}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}{r['recall']:>9.3f}")
    e = results["embedding"]
    print(f"{'embedding only':<16}{e['p50_ms']:>10.1f}{e['p95_ms']:>10.1f}{'-':>9}")


async def main() -> None:
    args = parse()
    with contextlib.ExitStack() as stack:
        directory = args.data_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="cmpb-", dir="/tmp"))
        )
        server = EmbeddedPostgres(directory)
        url = server.start()
        stack.callback(server.stop)
        await migrate_url(url)
        pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=4), url)
        try:
            results = await run(args, pool)
        finally:
            await pool.close()
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
