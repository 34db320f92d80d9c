"""The PostgreSQL connection pool, with the pgvector codec on every connection."""

from __future__ import annotations

import asyncpg
from pgvector.asyncpg import register_vector

from memory.config import DatabaseConfig

BIGINT_MAX = 2**63 - 1  # row ids are bigint: larger ids in a request are a 400, not a 500


async def create_pool(config: DatabaseConfig, url: str) -> asyncpg.Pool:
    """Open a pool to ``url`` (the schema must already have the vector extension)."""
    return await asyncpg.create_pool(
        url,
        min_size=config.pool_min,
        max_size=config.pool_max,
        timeout=config.connect_timeout_s,
        command_timeout=config.command_timeout_s,
        init=register_vector,
    )
