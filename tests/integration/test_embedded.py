"""The embedded servers keep their data across restarts and are not used when URLs are given."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import asyncpg
import redis

from memory.embedded import EmbeddedPostgres, EmbeddedRedis
from server.resources import open_resources
from server.settings import Settings


def test_redis_data_survives_a_restart() -> None:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        server = EmbeddedRedis(Path(directory))
        server.start()
        client = redis.Redis.from_url(server.url)
        client.set("acknowledged", "kept")
        client.close()
        server.stop()
        assert not server.socket_path.exists()

        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("acknowledged") == b"kept"
            assert client.config_get("appendonly") == {"appendonly": "yes"}
        finally:
            client.close()
            server.stop()


def test_postgres_data_survives_a_restart() -> None:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        server = EmbeddedPostgres(Path(directory))

        async def write(url: str) -> None:
            conn = await asyncpg.connect(url)
            await conn.execute("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
            await conn.close()

        async def read(url: str) -> str:
            conn = await asyncpg.connect(url)
            try:
                return str(await conn.fetchval("SELECT body FROM notes"))
            finally:
                await conn.close()

        asyncio.run(write(server.start()))
        server.stop()
        assert not (server.pgdata / "postmaster.pid").exists()
        try:
            assert asyncio.run(read(server.start())) == "kept"
        finally:
            server.stop()


async def test_configured_urls_start_nothing_embedded(settings: Settings) -> None:
    async with open_resources(settings) as resources:
        assert await resources.pool.fetchval("SELECT 1") == 1
        assert await resources.redis.ping()
    assert not (settings.data_dir / "postgres").exists()
    assert not (settings.data_dir / "redis").exists()
