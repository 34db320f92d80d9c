"""Several chat models loaded at once within a memory budget.

The manager holds one engine per loaded model id. A model is loaded on demand
(the first request naming it) or by an administrator, and unloaded by an
administrator or to make room: when a model does not fit in the budget, the
least recently used *idle* models are unloaded until it does. A model is idle
when nothing holds it through `ModelManager.generate` and its engine reports
no request running or waiting (so a model also used directly, such as the
default one by the companion chat turn, is never pulled from under a request).
When the model still does not fit, the load is refused with `NoRoomForModel`
(HTTP 503 with Retry-After) and nothing is unloaded.

Pinned models (the default chat model) are loaded at start and never
unloaded: the companion chat turn and the memory jobs hold their engine.

Memory estimate of a llama.cpp model (`estimate_memory`), unless the catalog
gives ``memory_mb``: the GGUF file size (the weights are mapped whole; the size of
its Q8_0 copy when the engine loads that, `inference.factory.weights_bytes`) plus
the KV cache, ``cells x layers x kv_heads x (key_length + value_length) x 2``
bytes (f16 cells, from the GGUF header; ``cells`` as `inference.factory.kv_cells`
gives the engine), plus the host-RAM KV cache bound
(``llamacpp.host_cache_bytes``). llama.cpp's compute buffers (some tens of MB) are not
counted. Remote models cost nothing here: their memory is the upstream's.

A vLLM model: its weights in bfloat16 (the safetensors files of a model
directory; for a GGUF, which is converted, four times its size: 4-bit
weights widened to 16) plus the KV cache it is given (``COMPANION_VLLM_KV_CACHE_MB``). On a
GPU, where the cache is a share of GPU memory instead, only the host-side
weights count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

from inference.config import ChatEngineConfig
from inference.engine import Engine
from inference.errors import ModelBusy, NoRoomForModel, UnknownModel
from inference.factory import gguf_shape, kv_cells, weights_bytes
from inference.types import GenerationRequest, StreamEvent
from models.packaged import packaged_path

log = logging.getLogger(__name__)

_MB = 1 << 20


def estimate_memory(config: ChatEngineConfig) -> int:
    """Bytes a model served by ``config`` takes in this process (see the module doc)."""
    if config.backend == "vllm":
        return _vllm_memory(config)
    if config.backend != "llamacpp":
        return 0
    path = config.model_path or _packaged_chat_model()
    if path is None:
        return 0
    size = weights_bytes(config, path)  # a Q8_0 copy is larger than the file
    shape = gguf_shape(path)
    if shape is None:
        return size + config.llamacpp.host_cache_bytes
    cells = kv_cells(config, shape)
    return size + cells * shape.kv_bytes_per_token() + config.llamacpp.host_cache_bytes


def _vllm_memory(config: ChatEngineConfig) -> int:
    path = config.model_path or _packaged_chat_model()
    kv = config.vllm.kv_cache_mb * _MB
    if path is None:
        return kv
    if path.is_dir():
        return kv + sum(f.stat().st_size for f in path.glob("*.safetensors"))
    return kv + path.stat().st_size * 4  # at most ~4-bit weights, widened to 16 bits


def _packaged_chat_model() -> Path | None:
    try:
        return packaged_path("chat")
    except FileNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class ModelOption:
    """A chat model the manager may load, with its memory estimate in bytes."""

    model_id: str
    config: ChatEngineConfig
    memory_bytes: int
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class OpenedEngine:
    """A started engine and how to close it (with whatever was started beside it)."""

    engine: Engine
    close: Callable[[], Awaitable[None]]


EngineOpener = Callable[[ChatEngineConfig], Awaitable[OpenedEngine]]


@dataclass
class _Loaded:
    option: ModelOption
    opened: OpenedEngine
    leases: int = 0
    last_used: float = field(default_factory=time.time)

    def busy(self) -> int:
        """Requests held through the manager or running/waiting in the engine."""
        stats = self.opened.engine.stats()
        return max(self.leases, stats.running + stats.waiting)


@dataclass(frozen=True, slots=True)
class ModelState:
    """One model as the admin endpoints show it."""

    id: str
    backend: str
    loaded: bool
    pinned: bool
    memory_bytes: int
    last_used: float | None  # Unix time; None when not loaded
    requests: int  # running or waiting


class ModelManager:
    """Loads, serves and unloads chat models within ``budget_bytes``."""

    def __init__(
        self, options: Sequence[ModelOption], budget_bytes: int, opener: EngineOpener
    ) -> None:
        self._options = {option.model_id: option for option in options}
        self.budget_bytes = budget_bytes
        self._opener = opener
        self._loaded: dict[str, _Loaded] = {}
        self._lock = asyncio.Lock()  # one load or unload at a time

    # --- what there is

    def ids(self) -> list[str]:
        """Every model that can be served: loaded ones first, then loadable ones."""
        loaded = list(self._loaded)
        return loaded + [i for i in self._options if i not in self._loaded]

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._options

    def states(self) -> list[ModelState]:
        return [self.state(model_id) for model_id in self.ids()]

    def used_bytes(self) -> int:
        return sum(loaded.option.memory_bytes for loaded in self._loaded.values())

    def loaded_engine(self, model_id: str) -> Engine | None:
        loaded = self._loaded.get(model_id)
        return loaded.opened.engine if loaded else None

    def loaded_engines(self) -> list[Engine]:
        return [loaded.opened.engine for loaded in self._loaded.values()]

    # --- loading and unloading

    async def load(self, model_id: str) -> Engine:
        """The engine of ``model_id``, loading it (and unloading idle models) if needed."""
        return (await self._ensure(model_id)).opened.engine

    async def unload(self, model_id: str) -> bool:
        """Unload ``model_id``; False when it was not loaded. `ModelBusy` when it is in use."""
        self._option(model_id)
        async with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is None:
                return False
            if loaded.option.pinned:
                raise ModelBusy(f"{model_id} is the default chat model; it stays loaded")
            requests = loaded.busy()
            if requests:
                raise ModelBusy(f"{model_id} has {requests} request(s) running")
            del self._loaded[model_id]
            await self._close(loaded)
        return True

    async def close(self) -> None:
        """Unload everything (at shutdown), most recently loaded first."""
        async with self._lock:
            while self._loaded:
                _, loaded = self._loaded.popitem()
                await self._close(loaded)

    async def forget(self, user_id: str) -> None:
        """Every loaded engine drops what it keeps of ``user_id`` (`Engine.forget`)."""
        for loaded in list(self._loaded.values()):
            await loaded.opened.engine.forget(user_id)

    # --- serving

    async def generate(
        self, model_id: str, request: GenerationRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``request`` on ``model_id`` (loaded first if needed), holding it loaded."""
        loaded = await self._ensure(model_id)
        loaded.leases += 1  # no await since _ensure returned: no unload slips in between
        try:
            async with aclosing(loaded.opened.engine.generate(request)) as events:
                async for event in events:
                    yield event
        finally:
            loaded.leases -= 1
            loaded.last_used = time.time()

    # --- inside

    def _option(self, model_id: str) -> ModelOption:
        try:
            return self._options[model_id]
        except KeyError:
            raise UnknownModel(f"unknown chat model {model_id!r}") from None

    async def _ensure(self, model_id: str) -> _Loaded:
        loaded = self._loaded.get(model_id)
        if loaded is not None:
            return loaded
        option = self._option(model_id)
        async with self._lock:
            loaded = self._loaded.get(model_id)
            if loaded is not None:  # loaded by whoever held the lock before us
                return loaded
            for victim in self._victims(option):
                del self._loaded[victim.option.model_id]
                log.info("unloading to make room", extra={"model": victim.option.model_id})
                await self._close(victim)
            opened = await self._opener(option.config)
            loaded = self._loaded[model_id] = _Loaded(option, opened)
            log.info("model loaded", extra={"model": model_id, "bytes": option.memory_bytes})
            return loaded

    def _victims(self, option: ModelOption) -> list[_Loaded]:
        """The least recently used idle models whose unloading makes ``option`` fit."""
        free = self.budget_bytes - self.used_bytes()
        if option.pinned or option.memory_bytes <= free:
            return []
        idle = [m for m in self._loaded.values() if not m.option.pinned and not m.busy()]
        victims = []
        for candidate in sorted(idle, key=lambda m: m.last_used):
            if option.memory_bytes <= free:
                break
            victims.append(candidate)
            free += candidate.option.memory_bytes
        if option.memory_bytes > free:
            raise NoRoomForModel(self._no_room(option), retry_after_s=5.0)
        return victims

    def _no_room(self, option: ModelOption) -> str:
        need, budget = option.memory_bytes // _MB, self.budget_bytes // _MB
        busy = [m.option.model_id for m in self._loaded.values() if m.busy()]
        return (
            f"{option.model_id} needs about {need} MB and does not fit in the {budget} MB "
            f"model budget (in use: {', '.join(busy) or 'nothing idle to unload'})"
        )

    async def _close(self, loaded: _Loaded) -> None:
        try:
            await loaded.opened.close()
        except Exception:  # a failed close must not keep the others loaded
            log.exception("closing a model failed", extra={"model": loaded.option.model_id})

    def state(self, model_id: str) -> ModelState:
        option = self._option(model_id)
        loaded = self._loaded.get(model_id)
        return ModelState(
            id=model_id,
            backend=option.config.backend,
            loaded=loaded is not None,
            pinned=option.pinned,
            memory_bytes=option.memory_bytes,
            last_used=loaded.last_used if loaded else None,
            requests=loaded.busy() if loaded else 0,
        )
