"""Accounts of the companion API: register, log in, who am I, export, erase.

Passwords are hashed with argon2 off the event loop (hashing is deliberately
slow). A failed login says the same thing whether the user or the password
was wrong.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import uuid
from typing import Annotated

import msgspec
from litestar import Controller, Response, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.params import JSONBody

from inference.errors import InferenceError
from memory.accounts import AccountStore, Caller
from memory.users import UserData, UserExport
from server.auth import resolve_user
from server.memories_api import long_term_memory
from server.ratelimit import ip_guard
from server.tokens import hash_password, issue_token, jwt_secret, password_matches

log = logging.getLogger(__name__)

Username = Annotated[str, msgspec.Meta(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")]
Password = Annotated[str, msgspec.Meta(min_length=8, max_length=256)]


@functools.cache
def _unknown_user_hash() -> str:
    """An argon2 hash no password matches, to check unknown names against."""
    return hash_password(secrets.token_urlsafe(32))


class Credentials(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    password: Password


class AccessToken(msgspec.Struct):
    access_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret


class Me(msgspec.Struct):
    id: str
    username: str
    is_admin: bool


class Conflict(ClientException):
    status_code = 409


def _user_data(state: State) -> UserData:
    resources = state.resources
    return UserData(resources.pool, resources.redis, long_term_memory(state), resources.sessions())


class AccountsController(Controller):
    path = "/api/v1"
    tags = ["accounts"]
    opt = {"rate_limit": "api"}

    @post("/auth/register", status_code=201, opt={"rate_limit": "auth"}, guards=[ip_guard])
    async def register(self, data: JSONBody[Credentials], state: State) -> Me:
        password_hash = await asyncio.to_thread(hash_password, data.password)
        user_id = await AccountStore(state.resources.pool).register(data.username, password_hash)
        if user_id is None:
            raise Conflict(f"the username {data.username!r} is taken")
        return Me(str(user_id), data.username, False)

    @post("/auth/login", status_code=200, opt={"rate_limit": "auth"}, guards=[ip_guard])
    async def login(self, data: JSONBody[Credentials], state: State) -> AccessToken:
        resources = state.resources
        found = await AccountStore(resources.pool).credentials(data.username)
        # an unknown name costs the same argon2 check, so timing does not tell which exist
        stored = found[1] if found is not None else _unknown_user_hash()
        matches = await asyncio.to_thread(password_matches, stored, data.password)
        if found is None or not matches:
            raise NotAuthorizedException("wrong username or password")
        ttl = resources.settings.jwt_ttl_s
        token = issue_token(found[0], jwt_secret(resources.settings), ttl)
        return AccessToken(access_token=token, expires_in=ttl)

    @get("/me", dependencies={"user": Provide(resolve_user)})
    async def me(self, user: NamedDependency[Caller]) -> Me:
        return Me(user.user_id, user.username, user.is_admin)

    @get("/me/export", dependencies={"user": Provide(resolve_user)})
    async def export(self, user: NamedDependency[Caller], state: State) -> Response[UserExport]:
        export = await _user_data(state).export(uuid.UUID(user.user_id))
        if export is None:
            raise NotAuthorizedException("the user no longer exists")
        disposition = f'attachment; filename="companion-{user.username}.json"'
        return Response(export, headers={"Content-Disposition": disposition})

    @delete("/me", dependencies={"user": Provide(resolve_user)})
    async def erase(self, user: NamedDependency[Caller], state: State) -> None:
        """The user's rows and Redis keys (`memory.users`), then the KV this process's
        engines computed from their prompts. Other instances' engines keep theirs until
        they need the room: it is not text, and they hold no way back to the user."""
        await _user_data(state).erase(uuid.UUID(user.user_id))
        models = state.resources.models
        if models is not None:
            try:
                await models.forget(user.user_id)
            except InferenceError as exc:  # an engine restarting starts with empty caches
                log.warning("engine caches not cleared", extra={"error": str(exc)})
