"""Register, log in, me, export and erase over HTTP, with real PostgreSQL and Redis."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from server.app import create_app
from server.settings import Settings
from server.tokens import jwt_secret

PASSWORD = "correct horse battery"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def sign_up(client: AsyncTestClient[Litestar], name: str) -> dict[str, str]:
    registered = await client.post(
        "/api/v1/auth/register", json={"username": name, "password": PASSWORD}
    )
    assert registered.status_code == 201, registered.text
    login = await client.post("/api/v1/auth/login", json={"username": name, "password": PASSWORD})
    assert login.status_code == 200
    body = login.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0
    return {"Authorization": f"Bearer {body['access_token']}"}


async def test_register_login_me(client: AsyncTestClient[Litestar]) -> None:
    name = f"ada{uuid.uuid4().hex[:6]}"
    headers = await sign_up(client, name)
    me = await client.get("/api/v1/me", headers=headers)
    assert me.json()["username"] == name

    taken = await client.post(
        "/api/v1/auth/register", json={"username": name.upper(), "password": PASSWORD}
    )
    assert taken.status_code == 409
    assert taken.json()["error"]["code"] == "conflict"
    wrong = await client.post(
        "/api/v1/auth/login", json={"username": name, "password": "wrong password"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"username": "nobody-x", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"]["message"] == unknown.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"username": "ab", "password": PASSWORD},
        {"username": "bad name!", "password": PASSWORD},
        {"username": "fine_name", "password": "short"},
        {"username": "fine_name", "password": PASSWORD, "admin": True},
    ],
)
async def test_bad_registrations_are_400(
    client: AsyncTestClient[Litestar], body: dict[str, object]
) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_forged_and_expired_tokens_are_refused(
    client: AsyncTestClient[Litestar], settings: Settings
) -> None:
    name = f"eve{uuid.uuid4().hex[:6]}"
    headers = await sign_up(client, name)
    user_id = (await client.get("/api/v1/me", headers=headers)).json()["id"]
    forged = jwt.encode(
        {"sub": user_id, "exp": time.time() + 60, "typ": "access"}, "not-the-secret" * 3
    )
    expired = jwt.encode(
        {"sub": user_id, "exp": time.time() - 5, "typ": "access"}, jwt_secret(settings)
    )
    for token in (forged, expired, "garbage"):
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert (await client.get("/api/v1/me")).status_code == 401


async def test_export_then_erase(client: AsyncTestClient[Litestar]) -> None:
    headers = await sign_up(client, f"bob{uuid.uuid4().hex[:6]}")
    export = await client.get("/api/v1/me/export", headers=headers)
    assert export.status_code == 200
    assert "attachment" in export.headers["content-disposition"]
    assert export.json()["user"]["username"].startswith("bob")
    assert (await client.delete("/api/v1/me", headers=headers)).status_code == 204
    assert (await client.get("/api/v1/me", headers=headers)).status_code == 401


async def test_dev_header_stands_in_only_when_enabled(settings: Settings) -> None:
    async with AsyncTestClient(create_app(settings)) as client:
        headers = await sign_up(client, f"dev{uuid.uuid4().hex[:6]}")
        user_id = (await client.get("/api/v1/me", headers=headers)).json()["id"]
        refused = await client.get("/api/v1/me", headers={"X-User-Id": user_id})
        assert refused.status_code == 401
    header_auth = dataclasses.replace(settings, dev_header_auth=True)
    async with AsyncTestClient(create_app(header_auth)) as client:
        allowed = await client.get("/api/v1/me", headers={"X-User-Id": user_id})
        assert allowed.status_code == 200
        assert allowed.json()["id"] == user_id


async def test_an_unknown_username_costs_the_same_password_check(
    client: AsyncTestClient[Litestar], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Skipping argon2 for names that do not exist would tell, by timing, which do."""
    import server.accounts_api as accounts_api

    checked: list[str] = []
    real = accounts_api.password_matches

    def spy(password_hash: str, password: str) -> bool:
        checked.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(accounts_api, "password_matches", spy)
    await sign_up(client, "known_user")
    checked.clear()
    for name in ("known_user", "no_such_user"):
        refused = await client.post(
            "/api/v1/auth/login", json={"username": name, "password": "wrong password!"}
        )
        assert refused.status_code == 401
        assert refused.json()["error"]["message"] == "wrong username or password"
    assert len(checked) == 2 and all(h.startswith("$argon2") for h in checked)
