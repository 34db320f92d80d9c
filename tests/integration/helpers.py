"""Small helpers shared by the integration tests."""

from __future__ import annotations

import uuid

import asyncpg


async def new_user(pool: asyncpg.Pool) -> uuid.UUID:
    """A user row with a random name."""
    user_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO users (username) VALUES ($1) RETURNING id", uuid.uuid4().hex
    )
    return user_id
