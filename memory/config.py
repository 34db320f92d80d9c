"""Configuration of the memory tier: PostgreSQL, Redis and their embedded stand-ins.

`server.settings` reads the environment once and builds these; nothing in
`memory` reads the environment itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    """How to reach PostgreSQL. ``url`` None means: start the embedded server.

    Pool defaults are sized for about 100 concurrent users per instance: a chat
    turn holds a connection only for its short reads and writes (never while
    tokens stream), so 20 connections serve 100 users with room for jobs.
    """

    url: str | None = None
    pool_min: int = 2
    pool_max: int = 20
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 30.0
    migrate_on_start: bool = True


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """How to reach Redis. ``url`` None means: start the embedded server.

    ``max_connections`` bounds the client pool of one instance; 100 covers one
    connection per concurrent user plus background jobs.
    """

    url: str | None = None
    max_connections: int = 100
    socket_timeout_s: float = 5.0
