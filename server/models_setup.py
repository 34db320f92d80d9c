"""The chat models this process can serve, and the manager that loads them.

The default chat model (``COMPANION_CHAT_ENGINE`` / ``COMPANION_CHAT_MODEL``) is
pinned: loaded at start, never unloaded, handed to the companion chat turn; so
is the small model for small talk (``COMPANION_CHAT_SMALL_MODEL``), and the
content judge's model when it has one of its own (``COMPANION_CONTENT_JUDGE``
naming a catalog model of role ``chat`` or ``guard``: a judge unloaded to make
room would reload inside a chat turn, far past its deadline), and the memory jobs' model
when it is not the chat model (``COMPANION_MEMORY_MODEL`` naming a catalog model of
role ``chat``, where this process runs the memory worker: the packaged 135M model
extracts no usable facts, docs/memory.md "Extraction, measured"; pinned so that a job
never waits for a reload, and so that a model that cannot run stops the start). Every
engine this process runs is opened by the manager (`inference.opener`), the pinned ones
too; this module only says which models there are and how each is configured.
Every chat model of the catalog (`models.catalog`) whose weights are on disk
is loadable on demand within ``COMPANION_MODEL_MEMORY_MB``:

- ``backend = "llamacpp"``: the engine settings of the default model
  (``COMPANION_CHAT_CTX``, slots, threads...), with ``n_ctx`` capped by the
  spec's ``context_length`` and overridable per model (``n_ctx``, ``n_slots``); an
  ``n_ctx`` of 0 (the default) is sized for each model by the factory (`kv_cells`);
- ``backend = "vllm"``: the same, on vLLM (`inference.engines.vllm`); the source is a
  Hugging Face model directory (``path:DIR``) or a GGUF that is converted once; the
  vLLM settings (``COMPANION_VLLM_*``) are the default model's;
- ``backend = "remote"``, ``source = "remote:UPSTREAM_MODEL"``: ``urls = [...]``
  (the replicas' base URLs), optional ``flavor``; it costs no local memory.

A catalog entry may set ``memory_mb`` to replace the estimate
(`inference.manager.estimate_memory`). Each loaded engine publishes its stats
as metrics every second and sits behind the response cache
(`inference.response_cache`), like the default.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import AsyncExitStack

from redis.asyncio import Redis

from inference.config import AUTO_UNIFIED_CELLS, ChatEngineConfig
from inference.engine_choice import choose
from inference.errors import UnknownModel
from inference.machine import machine_memory
from inference.manager import ModelManager, ModelOption, estimate_memory
from inference.opener import EngineLauncher
from models.catalog import Catalog, CatalogError, ModelSpec, load_catalog
from server.settings import Settings

log = logging.getLogger(__name__)

_MB = 1 << 20


async def open_models(
    stack: AsyncExitStack, settings: Settings, redis: Redis
) -> ModelManager | None:
    """The manager with the default model loaded; None when no chat engine is configured."""
    if settings.chat_engine.backend == "none":
        return None
    if settings.chat_engine.backend == "auto":  # measured once per model, CPU and engines
        chosen = await choose(settings.chat_engine)
        settings = dataclasses.replace(settings, chat_engine=chosen)
    options = model_options(settings, _catalog(settings))
    _require_judge_model(settings, options)
    _require_memory_model(settings, options)
    opener = EngineLauncher(redis, settings.response_cache_ttl_s)
    manager = ModelManager(options, memory_budget(settings), opener)
    stack.push_async_callback(manager.close)
    for option in options:
        if option.pinned:
            await manager.load(option.model_id)
    return manager


def small_model(settings: Settings) -> ChatEngineConfig | None:
    """The small model for short small talk (`server.complexity`), where one is configured:
    pinned like the default model, so it counts in the memory budget and stays loaded."""
    path = settings.chat_small_model
    if path is None or settings.chat_engine.backend != "llamacpp":
        return None
    return dataclasses.replace(settings.chat_engine, model_path=path, model_id=path.stem)


def judge_model_id(settings: Settings) -> str | None:
    """The catalog model the content judge runs on, when not the default chat model."""
    judge = settings.content_judge
    if judge in ("off", "chat") or judge == settings.chat_engine.model_id:
        return None
    return judge


def _require_judge_model(settings: Settings, options: list[ModelOption]) -> None:
    """Refuse to start without the judge the operator named: a safety layer that is
    silently missing is worse than a service that says why it did not start."""
    _require("COMPANION_CONTENT_JUDGE", judge_model_id(settings), "chat or guard", options)


def memory_model_id(settings: Settings) -> str | None:
    """The catalog model the memory jobs ask, when not the default chat model; None also
    where this process runs no memory worker (it never asks it)."""
    model = settings.memory_model
    if settings.memory_worker != "inprocess" or model in ("chat", settings.chat_engine.model_id):
        return None
    return model


def _require_memory_model(settings: Settings, options: list[ModelOption]) -> None:
    """Refuse to start without the memory model the operator named: the jobs falling
    back to the chat model would write the facts it was named to avoid."""
    _require("COMPANION_MEMORY_MODEL", memory_model_id(settings), "chat", options)


def _require(setting: str, model: str | None, roles: str, options: list[ModelOption]) -> None:
    """UnknownModel when ``model`` (named by ``setting``) is not among ``options``."""
    if model is not None and model not in (option.model_id for option in options):
        raise UnknownModel(
            f"{setting}={model}: no catalog model of role {roles} with that id can run"
            " here (unknown, weights not on disk, or backend not installed)"
        )


def memory_budget(settings: Settings) -> int:
    """``COMPANION_MODEL_MEMORY_MB``, or half of this machine's memory when it is 0."""
    if settings.model_memory_mb:
        return settings.model_memory_mb * _MB
    return machine_memory() // 2


def model_options(settings: Settings, catalog: Catalog | None) -> list[ModelOption]:
    """The pinned default model, then every catalog chat model that can be loaded (the
    judge's and the memory jobs' own models among them, pinned)."""
    pinned = [settings.chat_engine]
    small = small_model(settings)
    if small is not None and small.model_id != settings.chat_engine.model_id:
        pinned.append(small)
    options = [ModelOption(c.model_id, c, estimate_memory(c), pinned=True) for c in pinned]
    judge, memory = judge_model_id(settings), memory_model_id(settings)
    for spec in catalog.list() if catalog else []:
        served = spec.role == "chat" or (spec.id == judge and spec.role == "guard")
        if not served or spec.id in (c.model_id for c in pinned):
            continue
        config = catalog_config(settings, catalog, spec) if catalog else None
        if config is not None:
            pinned_here = spec.id in (judge, memory)
            options.append(ModelOption(spec.id, config, _memory(spec, config), pinned_here))
    return options


def catalog_config(
    settings: Settings, catalog: Catalog, spec: ModelSpec
) -> ChatEngineConfig | None:
    """How to run ``spec``; None when it cannot run here (weights absent, backend not built)."""
    base = dataclasses.replace(settings.chat_engine, model_id=spec.id)
    extra = spec.extra
    if spec.backend == "remote":
        urls = extra.get("urls")
        if not isinstance(urls, list) or not urls:
            return None
        remote = dataclasses.replace(
            base.remote,
            base_urls=tuple(str(u).rstrip("/") for u in urls),
            upstream_model=spec.source.partition(":")[2],
            api_key=None,  # the default model's key is not this upstream's
            flavor=str(extra.get("flavor", "openai")),
        )
        return dataclasses.replace(base, backend="remote", remote=remote)
    backend = spec.serving_backend(settings.chat_engine.backend)
    path = catalog.resolve(spec.id) if backend in ("llamacpp", "vllm") else None
    if backend is None or path is None:
        return None
    n_ctx = _int(extra.get("n_ctx"), base.n_ctx)
    if n_ctx or backend == "vllm":  # llama.cpp sizes 0 for the model (factory.kv_cells)
        n_ctx = min(n_ctx or AUTO_UNIFIED_CELLS, spec.context_length or AUTO_UNIFIED_CELLS)
    return dataclasses.replace(
        base,
        backend=backend,
        model_path=path,
        n_ctx=n_ctx,
        n_slots=_int(extra.get("n_slots"), base.n_slots),
    )


def _catalog(settings: Settings) -> Catalog | None:
    try:
        return load_catalog(settings.data_dir, hub_url=settings.hf_endpoint)
    except CatalogError as exc:  # a broken catalog must not stop the default model
        log.error("model catalog unusable; serving the default model only: %s", exc)
        return None


def _memory(spec: ModelSpec, config: ChatEngineConfig) -> int:
    given = spec.extra.get("memory_mb")
    if isinstance(given, int) and given >= 0:
        return given * _MB
    return estimate_memory(config)


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and value > 0 else default
