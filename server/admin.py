"""Administration endpoints (administrator keys only): API keys."""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from memory.accounts import AccountError, AccountStore, ApiKeyInfo, Caller, CreatedKey
from server.auth import resolve_admin


class NewKey(msgspec.Struct, forbid_unknown_fields=True):
    username: str = msgspec.field()
    name: str = ""
    admin: bool = False


def provide_accounts(state: State) -> AccountStore:
    return AccountStore(state.resources.pool)


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]
    dependencies = {
        "admin": Provide(resolve_admin),
        "accounts": Provide(provide_accounts, sync_to_thread=False),
    }

    @get("/keys")
    async def list_keys(
        self, accounts: NamedDependency[AccountStore], admin: NamedDependency[Caller]
    ) -> list[ApiKeyInfo]:
        return await accounts.list_keys()

    @post("/keys")
    async def create_key(
        self,
        data: JSONBody[NewKey],
        accounts: NamedDependency[AccountStore],
        admin: NamedDependency[Caller],
    ) -> CreatedKey:
        return await accounts.create_key(data.username, data.name, admin=data.admin)

    @delete("/keys/{key_id:uuid}")
    async def revoke_key(
        self,
        key_id: FromPath[UUID],
        accounts: NamedDependency[AccountStore],
        admin: NamedDependency[Caller],
    ) -> None:
        try:
            await accounts.revoke_key(key_id)
        except AccountError as exc:
            raise NotFoundException(str(exc)) from exc
