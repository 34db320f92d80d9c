"""One rule for every text the companion API stores: no NUL characters.

PostgreSQL text columns refuse NUL (``\\u0000`` in JSON); before this rule a
conversation title, a memory search query or an API key's name with one
reached the database and came back as a 500. Now every such request is a
clear 400 and stores nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from memory.accounts import AccountStore
from server.app import create_app
from server.settings import Settings

PASSWORD = "correct horse battery"
NUL = "\x00"


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


async def signed_up(client: AsyncTestClient[Litestar]) -> dict[str, str]:
    credentials = {"username": "nul_tester", "password": PASSWORD}
    assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
    login = await client.post("/api/v1/auth/login", json=credentials)
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def assert_refused(response: object) -> None:
    status = getattr(response, "status_code", None)
    assert status == 400, getattr(response, "text", response)
    error = response.json()["error"]  # type: ignore[attr-defined]
    assert error["code"] == "bad_request" and "NUL" in error["message"]


async def test_nul_in_any_stored_text_is_a_400_that_stores_nothing(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    auth = await signed_up(client)
    assert_refused(
        await client.post("/api/v1/conversations", json={"title": f"a{NUL}b"}, headers=auth)
    )
    assert (await client.get("/api/v1/conversations", headers=auth)).json() == []
    assert_refused(await client.get("/api/v1/memories", params={"query": NUL}, headers=auth))
    # in an object key too, and in a nested value
    assert_refused(
        await client.post("/api/v1/conversations", json={f"title{NUL}": "x"}, headers=auth)
    )

    admin = (await AccountStore(pool).create_key("root", admin=True)).key
    as_admin = {"Authorization": f"Bearer {admin}"}
    assert_refused(
        await client.post(
            "/api/v1/admin/keys", json={"username": "carol", "name": NUL}, headers=as_admin
        )
    )
    assert await AccountStore(pool).list_keys("carol") == []


async def test_a_backslash_followed_by_u0000_is_just_text(
    client: AsyncTestClient[Litestar],
) -> None:
    auth = await signed_up(client)
    literal = "\\u0000 is how JSON writes NUL"
    created = await client.post("/api/v1/conversations", json={"title": literal}, headers=auth)
    assert created.status_code == 201, created.text
    assert created.json()["title"] == literal
