"""Passwords (argon2) and access tokens (JWT, HS256) for the companion API.

In development without ``COMPANION_JWT_SECRET`` a random secret is created once
in ``<data dir>/jwt-secret`` (mode 0600), so tokens survive restarts and every
worker signs with the same key. Production requires the setting.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from server.settings import Settings

_hasher = PasswordHasher()
_ALGORITHM = "HS256"


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return bool(_hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


def jwt_secret(settings: Settings) -> str:
    """The configured secret, or the data dir's development secret (created once)."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.data_dir / "jwt-secret"
    if not path.exists():
        _create_secret(path)
    return path.read_text(encoding="utf-8").strip()


def _create_secret(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: when several workers race, exactly one writes
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secrets.token_urlsafe(48))


def issue_token(user_id: uuid.UUID, secret: str, ttl_s: int) -> str:
    now = int(time.time())
    claims = {"sub": str(user_id), "iat": now, "exp": now + ttl_s, "typ": "access"}
    return jwt.encode(claims, secret, algorithm=_ALGORITHM)


def token_user(token: str, secret: str) -> uuid.UUID | None:
    """The user a valid, unexpired access token was issued to; None otherwise."""
    try:
        claims = jwt.decode(token, secret, algorithms=[_ALGORITHM], options={"require": ["exp"]})
        if claims.get("typ") != "access":
            return None
        return uuid.UUID(str(claims["sub"]))
    except (jwt.PyJWTError, KeyError, ValueError):
        return None
