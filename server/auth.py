"""Who is calling: API keys for /v1 and the admin endpoints; access tokens for /api/v1.

With keys required (always in production), a request without a valid key
gets 401. In development bound to a loopback address keys may be off
(``COMPANION_API_KEYS_REQUIRED=false``, the default there), as in LM Studio:
a request without a key, or with a key that is not one of ours, is the local
user; a valid key still identifies its own user. The local user is never an
administrator: the admin endpoints always need an admin key.
"""

from __future__ import annotations

import uuid
from typing import Any

from litestar import Request
from litestar.datastructures import State
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException

from memory.accounts import KEY_PREFIX, AccountStore, Caller
from server.concurrency import hold_slot
from server.ratelimit import enforce_ip, enforce_user
from server.tokens import jwt_secret, token_user

# Never an administrator: with keys off, anything on this machine (and any web page a
# browser here opens) is the local caller; administration always takes an admin key.
LOCAL_CALLER = Caller(user_id="local", username="local", is_admin=False)


async def resolve_caller(request: Request[Any, Any, Any], state: State) -> Caller:
    """The caller of this request (a Litestar dependency), rate-limited by address and user."""
    await enforce_ip(request)
    caller = await _key_caller(request, state)
    await enforce_user(request, caller.user_id)
    if caller is not LOCAL_CALLER:  # keys off: one person's machine (`server.concurrency`)
        await hold_slot(request, caller.user_id)
    return caller


async def _key_caller(request: Request[Any, Any, Any], state: State) -> Caller:
    resources = state.resources
    key = _bearer(request)
    required = resources.settings.api_keys_required
    if key is None or (not required and not key.startswith(KEY_PREFIX)):
        if required:
            raise NotAuthorizedException(
                "You didn't provide an API key. Send it as 'Authorization: Bearer sk-cmp-...'."
            )
        return LOCAL_CALLER
    caller = await AccountStore(resources.pool).authenticate(key)
    if caller is None:
        raise NotAuthorizedException("Incorrect API key provided.")
    return caller


async def resolve_admin(request: Request[Any, Any, Any], state: State) -> Caller:
    """An administrator, known by an admin key, whether or not keys are required."""
    caller = await resolve_caller(request, state)
    if caller is LOCAL_CALLER:
        raise NotAuthorizedException(
            "administration needs an administrator's API key (companion keys create NAME --admin)"
        )
    if not caller.is_admin:
        raise PermissionDeniedException("this needs an administrator's key")
    return caller


def _bearer(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


async def resolve_user(request: Request[Any, Any, Any], state: State) -> Caller:
    """The signed-in user of a companion API request (a Litestar dependency).

    A Bearer access token (or one of our API keys); in development with
    ``COMPANION_DEV_HEADER_AUTH`` on, an ``X-User-Id`` header instead. Rate-limited
    by address before authentication and by user after it.
    """
    await enforce_ip(request)
    resources = state.resources
    accounts = AccountStore(resources.pool)
    token = _bearer(request)
    caller = None
    if token is not None and token.startswith(KEY_PREFIX):
        caller = await accounts.authenticate(token)
    elif token is not None:
        user_id = token_user(token, jwt_secret(resources.settings))
        caller = await accounts.caller(user_id) if user_id else None
    elif resources.settings.dev_header_auth:
        caller = await _header_user(request, accounts)
    if caller is None:
        raise NotAuthorizedException("a valid access token is required")
    await enforce_user(request, caller.user_id)
    await hold_slot(request, caller.user_id)
    return caller


async def _header_user(request: Request[Any, Any, Any], accounts: AccountStore) -> Caller | None:
    try:
        user_id = uuid.UUID(request.headers.get("x-user-id", ""))
    except ValueError:
        return None
    return await accounts.caller(user_id)
