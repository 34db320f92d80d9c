"""What a caller on this machine can do with keys off (development on loopback).

With keys off, anything on the machine is the local caller, and so is any web
page a browser here opens that rebinds its own name to 127.0.0.1. Both
findings of the hardening review are checked here against the real app:
administration always needs an admin key, and Host headers the server does
not serve are refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from memory.accounts import AccountStore
from server.app import create_app
from server.settings import Settings, load_settings


@pytest.fixture
def loopback(settings: Settings) -> Settings:
    """Development on 127.0.0.1:8000 with the defaults: keys off, loopback hosts only."""
    defaults = load_settings({"COMPANION_DATA_DIR": str(settings.data_dir)})
    assert defaults.api_keys_required is False
    return dataclasses.replace(settings, allowed_hosts=defaults.allowed_hosts)


@pytest.fixture
async def local(loopback: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_app(loopback)
    async with AsyncTestClient(app, base_url="http://127.0.0.1:8000") as client:
        yield client


async def test_without_a_key_nobody_mints_keys_or_administers(
    local: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    takeover = await local.post("/api/v1/admin/keys", json={"username": "alice"})
    assert takeover.status_code == 401, takeover.text
    assert "admin" in takeover.json()["error"]["message"]
    for path in ("/api/v1/admin/keys", "/api/v1/admin/stats"):
        assert (await local.get(path)).status_code == 401, path
    assert await AccountStore(pool).list_keys("alice") == []  # nothing was created

    accounts = AccountStore(pool)
    plain = (await accounts.create_key("bob")).key
    admin = (await accounts.create_key("root", admin=True)).key
    refused = await local.post(
        "/api/v1/admin/keys",
        json={"username": "alice"},
        headers={"Authorization": f"Bearer {plain}"},
    )
    assert refused.status_code == 403
    minted = await local.post(
        "/api/v1/admin/keys",
        json={"username": "alice"},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert minted.status_code == 201, minted.text


async def test_the_local_caller_still_uses_v1_without_a_key(
    local: AsyncTestClient[Litestar],
) -> None:
    assert (await local.get("/v1/models")).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "localhost", "[::1]:8000"])
async def test_this_machines_names_are_served(local: AsyncTestClient[Litestar], host: str) -> None:
    assert (await local.get("/health/live", headers={"Host": host})).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
async def test_a_rebound_name_is_refused(local: AsyncTestClient[Litestar], host: str) -> None:
    refused = await local.post(
        "/api/v1/admin/keys", json={"username": "alice"}, headers={"Host": host}
    )
    assert refused.status_code == 400
    assert (await local.get("/v1/models", headers={"Host": host})).status_code == 400


async def test_operators_name_their_hosts(settings: Settings) -> None:
    named = dataclasses.replace(settings, allowed_hosts=("chat.example.com", "*.lan"))
    async with AsyncTestClient(create_app(named), base_url="http://chat.example.com") as client:
        assert (await client.get("/health/live")).status_code == 200
        for host, status in (("box.lan", 200), ("chat.example.com:8000", 200), ("x.com", 400)):
            got = await client.get("/health/live", headers={"Host": host})
            assert got.status_code == status, host
