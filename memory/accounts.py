"""Users and API keys in PostgreSQL.

An API key is ``sk-cmp-`` followed by 32 random bytes (URL-safe base64). It is
shown once, when created; the database keeps its SHA-256 and a short prefix.
Each key belongs to a user, so everything keyed by user (prefix-cache
isolation, rate limits, memories) follows the key.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from memory.errors import AccountError

KEY_PREFIX = "sk-cmp-"
_SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 6


class Caller(msgspec.Struct, frozen=True):
    """Who is calling: the user a key belongs to."""

    user_id: str
    username: str
    is_admin: bool = False


class ApiKeyInfo(msgspec.Struct, frozen=True):
    """A key as operators see it: never the key itself."""

    id: UUID
    username: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(msgspec.Struct, frozen=True):
    info: ApiKeyInfo
    key: str  # shown once


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class AccountStore:
    """Users and their API keys."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def ensure_user(self, username: str, *, is_admin: bool = False) -> UUID:
        """The id of ``username``, creating the user (without a password) if needed."""
        row = await self._pool.fetchrow(
            "INSERT INTO users (username, is_admin) VALUES ($1, $2)"
            " ON CONFLICT (lower(username)) DO UPDATE SET is_admin = users.is_admin OR $2"
            " RETURNING id",
            username,
            is_admin,
        )
        return UUID(str(row["id"]))

    async def register(self, username: str, password_hash: str) -> UUID | None:
        """A new user with a password; None when the name is taken (case-insensitively)."""
        row = await self._pool.fetchrow(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2)"
            " ON CONFLICT (lower(username)) DO NOTHING RETURNING id",
            username,
            password_hash,
        )
        return None if row is None else UUID(str(row["id"]))

    async def credentials(self, username: str) -> tuple[UUID, str] | None:
        """The id and password hash of ``username``; None when unknown or without a password."""
        row = await self._pool.fetchrow(
            "SELECT id, password_hash FROM users WHERE lower(username) = lower($1)", username
        )
        if row is None or row["password_hash"] is None:
            return None
        return UUID(str(row["id"])), row["password_hash"]

    async def caller(self, user_id: UUID) -> Caller | None:
        """The user ``user_id`` as a caller; None when there is no such user."""
        row = await self._pool.fetchrow(
            "SELECT id, username, is_admin FROM users WHERE id = $1", user_id
        )
        return None if row is None else Caller(str(row["id"]), row["username"], row["is_admin"])

    async def mark_minor(self, user_id: UUID) -> None:
        """Flag ``user_id`` as a minor, permanently (the first date is kept)."""
        await self._pool.execute(
            "UPDATE users SET minor_since = coalesce(minor_since, now()) WHERE id = $1", user_id
        )

    async def is_minor(self, user_id: UUID) -> bool:
        flagged = await self._pool.fetchval(
            "SELECT minor_since IS NOT NULL FROM users WHERE id = $1", user_id
        )
        return bool(flagged)

    async def create_key(self, username: str, name: str = "", *, admin: bool = False) -> CreatedKey:
        """A new key for ``username`` (created if unknown); the plain key is returned once."""
        user_id = await self.ensure_user(username, is_admin=admin)
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = await self._pool.fetchrow(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash) VALUES ($1, $2, $3, $4)"
            " RETURNING id, created_at",
            user_id,
            name,
            key[:_SHOWN_PREFIX_LENGTH],
            hash_key(key),
        )
        info = ApiKeyInfo(
            row["id"], username, name, key[:_SHOWN_PREFIX_LENGTH], row["created_at"], None, None
        )
        return CreatedKey(info=info, key=key)

    async def authenticate(self, key: str) -> Caller | None:
        """The caller a valid, unrevoked key belongs to; None otherwise."""
        if not key.startswith(KEY_PREFIX):
            return None
        row = await self._pool.fetchrow(
            "UPDATE api_keys k SET last_used_at = now() FROM users u"
            " WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.id = k.user_id"
            " RETURNING u.id, u.username, u.is_admin",
            hash_key(key),
        )
        if row is None:
            return None
        return Caller(str(row["id"]), row["username"], row["is_admin"])

    async def list_keys(self, username: str | None = None) -> list[ApiKeyInfo]:
        rows = await self._pool.fetch(
            "SELECT k.id, u.username, k.name, k.prefix, k.created_at, k.last_used_at,"
            " k.revoked_at FROM api_keys k JOIN users u ON u.id = k.user_id"
            " WHERE $1::text IS NULL OR lower(u.username) = lower($1) ORDER BY k.created_at",
            username,
        )
        return [ApiKeyInfo(**dict(row)) for row in rows]

    async def revoke_key(self, key_id: UUID) -> None:
        """Revoke a key; unknown or already revoked ids are an error."""
        done = await self._pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL"
            " RETURNING id",
            key_id,
        )
        if done is None:
            raise AccountError(f"no active key with id {key_id}")
