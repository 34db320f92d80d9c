"""The async Redis client, one connection pool per process."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from memory.config import RedisConfig


def create_redis(config: RedisConfig, url: str) -> Redis:
    """A client for ``url`` that reconnects (with backoff) after Redis restarts."""
    return Redis.from_url(
        url,
        max_connections=config.max_connections,
        socket_timeout=config.socket_timeout_s,
        socket_connect_timeout=config.socket_timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        decode_responses=False,
    )
