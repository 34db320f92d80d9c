from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import numpy as np
import pytest

from memory.config import DatabaseConfig
from memory.db import create_pool
from memory.errors import MigrationError
from memory.migrate import Migration, discover, migrate_url

EXPECTED_TABLES = {"users", "conversations", "messages", "memories", "schema_migrations"}
EXPECTED_INDEXES = {
    "conversations_user_updated_idx",
    "messages_conversation_idx",
    "memories_embedding_idx",
    "memories_search_idx",
    "memories_user_conversation_idx",
    "memories_user_importance_idx",
}


async def recorded_versions(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [row["version"] for row in rows]


async def test_running_twice_applies_once(database_url: str) -> None:
    first = await migrate_url(database_url)
    second = await migrate_url(database_url)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert second == []
    assert await recorded_versions(database_url) == [m.version for m in discover()]

    conn = await asyncpg.connect(database_url)
    try:
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables")}
        indexes = {r["indexname"] for r in await conn.fetch("SELECT indexname FROM pg_indexes")}
        hnsw = await conn.fetchval(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'memories_embedding_idx'"
        )
    finally:
        await conn.close()
    assert tables >= EXPECTED_TABLES
    assert indexes >= EXPECTED_INDEXES
    assert "hnsw" in hnsw and "vector_cosine_ops" in hnsw


async def test_concurrent_appliers_take_turns(database_url: str) -> None:
    results = await asyncio.gather(*(migrate_url(database_url) for _ in range(4)))
    applied = [m.version for result in results for m in result]
    assert sorted(applied) == [m.version for m in discover()]  # each applied exactly once


def test_two_processes_at_once(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "COMPANION_LOG_LEVEL": "warning"}
    command = [sys.executable, "-c", "from server.cli import main; main()", "migrate"]
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    said = sorted(out for out, _ in outputs)
    assert said[0].startswith("applied 0001_initial")
    assert said[1].strip() == "schema is up to date"
    assert asyncio.run(recorded_versions(database_url)) == [m.version for m in discover()]


async def test_edited_migration_is_refused(database_url: str) -> None:
    await migrate_url(database_url)
    original = discover()[0]
    edited = Migration(original.version, original.name, original.sql + "\n-- edited\n")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate_url(database_url, [edited])


async def test_failed_migration_leaves_nothing_behind(database_url: str) -> None:
    good = Migration(1, "good", "CREATE TABLE kept_if_committed (id int);")
    bad = Migration(2, "bad", "CREATE TABLE broken (id nosuchtype);")
    with pytest.raises(MigrationError, match="0002_bad failed"):
        await migrate_url(database_url, [good, bad])
    conn = await asyncpg.connect(database_url)
    try:
        leftover = await conn.fetchval("SELECT to_regclass('kept_if_committed')")
        ledger = await conn.fetchval("SELECT to_regclass('schema_migrations')")
    finally:
        await conn.close()
    assert leftover is None and ledger is None


async def test_pool_round_trips_vectors(database_url: str) -> None:
    await migrate_url(database_url)
    pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=2), database_url)
    try:
        user_id = await pool.fetchval("INSERT INTO users (username) VALUES ('ada') RETURNING id")
        embedding = np.linspace(-1, 1, 384, dtype=np.float32)
        await pool.execute(
            "INSERT INTO memories (user_id, kind, content, embedding, source_message_ids)"
            " VALUES ($1, 'semantic', 'Ada likes tea', $2, '{1,2}')",
            user_id,
            embedding,
        )
        row = await pool.fetchrow(
            "SELECT embedding, embedding <=> $1 AS distance, search @@ to_tsquery('tea') AS hit"
            " FROM memories",
            embedding,
        )
    finally:
        await pool.close()
    assert np.allclose(row["embedding"].to_numpy(), embedding)
    assert row["distance"] == pytest.approx(0.0, abs=1e-6)
    assert row["hit"] is True


async def test_a_released_connection_is_not_reset_but_its_transaction_is_ended(
    database_url: str,
) -> None:
    # The pool skips asyncpg's reset query (the service keeps no session state), and
    # relies on asyncpg still ending a transaction a caller left open.
    await migrate_url(database_url)
    pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=1), database_url)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SET application_name = 'left-behind'")
            await conn.execute("BEGIN")
            await conn.execute("CREATE TABLE never_committed (id int)")
        async with pool.acquire() as conn:  # the same connection: the pool holds one
            assert await conn.fetchval("SHOW application_name") == "left-behind"
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('never_committed')") is None
    finally:
        await pool.close()
