"""Real PostgreSQL (with pgvector) and Redis, started once for the whole session."""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from inference.embedder import SentenceEmbedder
from memory.config import DatabaseConfig, RedisConfig
from memory.db import create_pool
from memory.embedded import EmbeddedPostgres, EmbeddedRedis
from memory.migrate import migrate_url
from memory.redis_client import create_redis
from server.app import create_app
from server.settings import Settings, load_settings


@pytest.fixture(scope="session")
def services_dir() -> Iterator[Path]:
    # Short path: unix socket paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        yield Path(directory)


@pytest.fixture(scope="session")
def postgres_url(services_dir: Path) -> Iterator[str]:
    server = EmbeddedPostgres(services_dir)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def redis_url(services_dir: Path) -> Iterator[str]:
    server = EmbeddedRedis(services_dir)
    url = server.start()
    yield url
    server.stop()


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
async def database_url(postgres_url: str) -> AsyncIterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(postgres_url, name)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's own database, migrated to the current schema."""
    await migrate_url(database_url)
    db = await create_pool(DatabaseConfig(pool_min=1, pool_max=6), database_url)
    yield db
    await db.close()


@pytest.fixture(scope="session")
def embedder() -> Iterator[SentenceEmbedder]:
    """The packaged MiniLM, loaded once for the whole run."""
    model = SentenceEmbedder()
    yield model
    model.close()


@pytest.fixture
async def shared_redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client of the session's Redis (shared by all tests: use unique keys)."""
    client = create_redis(RedisConfig(), redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "COMPANION_DATA_DIR": str(tmp_path),
            "COMPANION_LOG_LEVEL": "warning",
            "COMPANION_CHAT_ENGINE": "none",  # tests that need an engine opt in
            "COMPANION_EMBEDDER": "none",
            "COMPANION_RATE_LIMITS": "false",  # one shared Redis: tests that need limits opt in
            # the test client's testserver.local and real servers on 127.0.0.1 alike; the
            # tests of the Host check (test_local_access.py) set their own
            "COMPANION_ALLOWED_HOSTS": "*",
        }
    )


@pytest.fixture
async def chat_client(
    settings: Settings, tiny_gguf: Path
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The whole app with the tiny chat model and MiniLM, on this test's database."""
    engine = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)
    full = dataclasses.replace(settings, chat_engine=engine, embedder="minilm")
    async with AsyncTestClient(create_app(full), timeout=120) as test_client:
        yield test_client
