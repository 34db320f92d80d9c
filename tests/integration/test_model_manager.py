"""Several chat models at once: the model manager with real tiny llama.cpp models.

Catalog models ``a``, ``b`` and ``c`` are copies of the tiny GGUF declared in
``<data dir>/models.toml``; the default model ``tiny`` is pinned. The budget
holds the default plus two of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from helpers import catalog_settings
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from inference.errors import ModelBusy, NoRoomForModel, UnknownModel
from inference.manager import ModelManager, OpenedEngine
from inference.opener import open_engine
from inference.types import ChatMessage, GenerationRequest, SamplingParams, StreamEvent
from memory.accounts import AccountStore
from models.catalog import load_catalog
from server.app import create_app
from server.models_setup import model_options
from server.settings import Settings

_MB = 1 << 20
BUILTIN = "smollm2-135m-instruct"  # the packaged chat model is in every catalog


def request(max_tokens: int = 8) -> GenerationRequest:
    return GenerationRequest(
        request_id=f"r-{time.monotonic_ns()}",
        user_id="alice",
        messages=[ChatMessage("user", "Tell me about your day.")],
        sampling=SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
    )


async def ask(manager: ModelManager, model_id: str) -> None:
    async for _ in manager.generate(model_id, request()):
        pass


async def hold(manager: ModelManager, model_id: str) -> AsyncGenerator[StreamEvent, None]:
    """A request on ``model_id`` that has started and is still open."""
    stream = manager.generate(model_id, request(max_tokens=1000))
    await anext(stream)
    return stream


async def until_idle(manager: ModelManager, model_id: str) -> None:
    deadline = time.monotonic() + 30
    while manager.state(model_id).requests:
        assert time.monotonic() < deadline, f"{model_id} stayed busy"
        await asyncio.sleep(0.05)


def loaded(manager: ModelManager) -> set[str]:
    return {state.id for state in manager.states() if state.loaded}


@pytest.fixture
async def manager(
    settings: Settings, tiny_gguf: Path, shared_redis: Redis
) -> AsyncIterator[ModelManager]:
    configured = catalog_settings(settings, tiny_gguf)
    options = model_options(configured, load_catalog(configured.data_dir))

    async def opener(config: ChatEngineConfig) -> OpenedEngine:
        return await open_engine(config, shared_redis, 0)

    models = ModelManager(options, configured.model_memory_mb * _MB, opener)
    await models.load("tiny")
    yield models
    await models.close()


def test_the_estimate_is_weights_plus_kv_cache(settings: Settings, tiny_gguf: Path) -> None:
    configured = catalog_settings(settings, tiny_gguf)
    options = {o.model_id: o for o in model_options(configured, load_catalog(configured.data_dir))}
    assert set(options) == {"tiny", "a", "b", "c", BUILTIN}
    assert options["tiny"].pinned and not options["a"].pinned
    # tiny GGUF: 2 layers x 2 KV heads x (16 + 16) dims x 2 bytes = 256 bytes a token
    assert options["a"].memory_bytes == tiny_gguf.stat().st_size + 2048 * 256


async def test_least_recently_used_idle_model_makes_room(manager: ModelManager) -> None:
    await manager.load("a")
    await manager.load("b")
    await ask(manager, "a")  # b is now the least recently used
    await manager.load("c")
    assert loaded(manager) == {"tiny", "a", "c"}

    # c is the least recently used but busy: a goes instead
    held = await hold(manager, "c")
    await ask(manager, "a")
    await manager.load("b")
    assert loaded(manager) == {"tiny", "b", "c"}
    with pytest.raises(ModelBusy):
        await manager.unload("c")

    # both busy: nothing can make room, and nothing is unloaded
    other = await hold(manager, "b")
    with pytest.raises(NoRoomForModel):
        await manager.load("a")
    assert loaded(manager) == {"tiny", "b", "c"}

    await held.aclose()
    await other.aclose()
    await until_idle(manager, "c")
    await until_idle(manager, "b")
    assert await manager.unload("c")
    await manager.load("a")
    assert loaded(manager) == {"tiny", "a", "b"}


async def test_the_default_stays_and_unknown_models_are_refused(manager: ModelManager) -> None:
    with pytest.raises(ModelBusy):
        await manager.unload("tiny")
    with pytest.raises(UnknownModel):
        await manager.load("nope")
    assert not await manager.unload("a")  # not loaded: nothing to do


async def test_every_loaded_engine_publishes_metrics(manager: ModelManager) -> None:
    await manager.load("b")
    await ask(manager, "b")

    def sample(name: str, model: str) -> float:
        value = REGISTRY.get_sample_value(f"companion:{name}", {"model_name": model})
        return -1.0 if value is None else value

    deadline = time.monotonic() + 30  # published every second
    while sample("num_requests_running", "tiny") < 0 or sample("generation_tokens_total", "b") < 8:
        assert time.monotonic() < deadline, "no metrics for the loaded engines"
        await asyncio.sleep(0.05)


# --- over HTTP


@pytest.fixture
async def client(settings: Settings, tiny_gguf: Path) -> AsyncIterator[AsyncTestClient[Litestar]]:
    huge = 'role = "chat"\nbackend = "llamacpp"\nmemory_mb = 1000000\nsource = "path:{}"'
    configured = catalog_settings(settings, tiny_gguf, huge=huge.format(tiny_gguf))
    keyed = dataclasses.replace(configured, api_keys_required=True)
    async with AsyncTestClient(create_app(keyed), timeout=120) as test_client:
        yield test_client


async def test_admin_endpoints_list_load_and_unload(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    accounts = AccountStore(pool)
    admin = {"Authorization": f"Bearer {(await accounts.create_key('boss', admin=True)).key}"}
    user = {"Authorization": f"Bearer {(await accounts.create_key('someone')).key}"}
    url = "/api/v1/admin/models"
    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=user)).status_code == 403
    assert (await client.post(f"{url}/a/load", headers=user)).status_code == 403

    listing = (await client.get(url, headers=admin)).json()
    models = {m["id"]: m for m in listing["models"]}
    assert set(models) == {"tiny", "a", "b", "c", "huge", BUILTIN}
    assert models["tiny"]["loaded"] and models["tiny"]["pinned"]
    assert not models["a"]["loaded"] and models["a"]["memory_bytes"] > 0
    assert listing["used_bytes"] == models["tiny"]["memory_bytes"] < listing["budget_bytes"]

    loaded_a = await client.post(f"{url}/a/load", headers=admin)
    assert loaded_a.status_code == 200 and loaded_a.json()["loaded"]
    assert loaded_a.json()["last_used"] is not None
    unloaded = await client.post(f"{url}/a/unload", headers=admin)
    assert unloaded.status_code == 200 and not unloaded.json()["loaded"]

    assert (await client.post(f"{url}/tiny/unload", headers=admin)).status_code == 409
    assert (await client.post(f"{url}/nope/load", headers=admin)).status_code == 404
    too_big = await client.post(f"{url}/huge/load", headers=admin)
    assert too_big.status_code == 503 and too_big.headers["retry-after"]
    assert "budget" in too_big.json()["error"]["message"]


async def test_openai_api_serves_and_lists_every_catalog_model(
    client: AsyncTestClient[Litestar], pool: asyncpg.Pool
) -> None:
    key = (await AccountStore(pool).create_key("boss", admin=True)).key
    auth = {"Authorization": f"Bearer {key}"}
    ids = [m["id"] for m in (await client.get("/v1/models", headers=auth)).json()["data"]]
    assert ids[0] == "tiny" and set(ids) == {"tiny", "a", "b", "c", "huge", BUILTIN}

    body = {"model": "b", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    reply = await client.post("/v1/chat/completions", json=body, headers=auth)
    assert reply.status_code == 200, reply.text
    assert reply.json()["model"] == "b" and reply.json()["usage"]["completion_tokens"] > 0
    listing = (await client.get("/api/v1/admin/models", headers=auth)).json()
    assert {m["id"] for m in listing["models"] if m["loaded"]} == {"tiny", "b"}
    assert (await client.get("/v1/models/b", headers=auth)).status_code == 200

    unknown = await client.post(
        "/v1/chat/completions", json={**body, "model": "nope"}, headers=auth
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert unknown.json()["error"]["param"] == "model"

    too_big = await client.post(
        "/v1/chat/completions", json={**body, "model": "huge"}, headers=auth
    )
    assert too_big.status_code == 503 and too_big.headers["retry-after"]
    assert too_big.json()["error"]["code"] == "overloaded"


async def test_only_admins_make_models_load_unless_the_operator_allows(
    settings: Settings, tiny_gguf: Path, pool: asyncpg.Pool
) -> None:
    """A /v1 caller could unload everyone's idle models by asking for one after another
    (issue 16, finding 8): loading takes an admin key or the operator's allow-list."""
    accounts = AccountStore(pool)
    admin = {"Authorization": f"Bearer {(await accounts.create_key('boss', admin=True)).key}"}
    user = {"Authorization": f"Bearer {(await accounts.create_key('someone')).key}"}
    configured = catalog_settings(settings, tiny_gguf)
    keyed = dataclasses.replace(configured, api_keys_required=True, user_loadable_models=("c",))
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    async with AsyncTestClient(create_app(keyed), timeout=120) as client:
        refused = await client.post(
            "/v1/chat/completions", json={**body, "model": "b"}, headers=user
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "model_not_loaded"
        listing = (await client.get("/api/v1/admin/models", headers=admin)).json()
        assert {m["id"] for m in listing["models"] if m["loaded"]} == {"tiny"}  # nothing moved
        for model, headers in (("tiny", user), ("c", user), ("b", admin), ("b", user)):
            served = await client.post(
                "/v1/chat/completions", json={**body, "model": model}, headers=headers
            )
            assert served.status_code == 200, (model, served.text)  # loaded, allowed, or admin
