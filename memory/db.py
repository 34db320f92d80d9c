"""The PostgreSQL connection pool, with the pgvector codec on every connection."""

from __future__ import annotations

from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from memory.config import DatabaseConfig
from memory.errors import DatabaseUnavailable

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
        reset=_nothing_to_reset,
        connect=_connect,
    )


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    """A new pool connection; PostgreSQL out of reach is `DatabaseUnavailable`.

    Without this, a stopped server surfaces as the OS's own error from deep in
    the pool (ConnectionRefusedError on TCP, FileNotFoundError for a missing
    Unix socket), which no caller can tell from a bug.
    """
    try:
        return await asyncpg.connect(*args, **kwargs)
    except OSError as exc:
        raise DatabaseUnavailable(f"PostgreSQL is unreachable: {exc.strerror or exc}") from exc


async def _nothing_to_reset(connection: asyncpg.Connection) -> None:
    """Return a connection to the pool without asyncpg's reset query.

    By default every release runs ``SELECT pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL;``: one more round trip and statement per query made
    through the pool (a chat turn makes about a dozen), and the connection is
    not free for the next request until it is done. This code keeps no session
    state: no advisory locks, no cursors outside a transaction, no LISTEN, no
    SET (only SET LOCAL inside transactions). asyncpg itself still rolls back a
    transaction left open, whatever this function does.
    """
