"""Administration endpoints (administrator keys only): API keys, chat models.

Models (`inference.manager`): ``GET /api/v1/admin/models`` lists the loaded
and loadable chat models with their memory estimates, the budget and when
each was last used; ``POST .../{id}/load`` loads one (unloading least
recently used idle models to fit; 503 with Retry-After when it cannot);
``POST .../{id}/unload`` unloads one (409 while it has requests running, or
for the default model). Unknown ids are a 404.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from inference.errors import EngineUnavailable
from inference.manager import ModelManager, ModelState
from memory.accounts import AccountStore, ApiKeyInfo, Caller, CreatedKey
from memory.errors import AccountError
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
    opt = {"rate_limit": "admin"}
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


class ModelsReport(msgspec.Struct):
    budget_bytes: int
    used_bytes: int
    models: list[ModelState]


def provide_models(state: State) -> ModelManager:
    models: ModelManager | None = state.resources.models
    if models is None:
        raise EngineUnavailable("no chat engine is configured (COMPANION_CHAT_ENGINE=none)")
    return models


class ModelsAdminController(Controller):
    path = "/api/v1/admin/models"
    opt = {"rate_limit": "admin"}
    tags = ["admin"]
    dependencies = {
        "admin": Provide(resolve_admin),
        "models": Provide(provide_models, sync_to_thread=False),
    }

    @get("/", cache=False)
    async def list_models(
        self, models: NamedDependency[ModelManager], admin: NamedDependency[Caller]
    ) -> ModelsReport:
        return ModelsReport(models.budget_bytes, models.used_bytes(), models.states())

    @post("/{model_id:str}/load", status_code=200)
    async def load_model(
        self,
        model_id: FromPath[str],
        models: NamedDependency[ModelManager],
        admin: NamedDependency[Caller],
    ) -> ModelState:
        await models.load(model_id)
        return models.state(model_id)

    @post("/{model_id:str}/unload", status_code=200)
    async def unload_model(
        self,
        model_id: FromPath[str],
        models: NamedDependency[ModelManager],
        admin: NamedDependency[Caller],
    ) -> ModelState:
        await models.unload(model_id)
        return models.state(model_id)
