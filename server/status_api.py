"""``GET /api/v1/models``: what this server runs, for a signed-in user (the web UI's panel).

``/v1/models`` answers the same question for OpenAI clients but takes API keys
when keys are required; this endpoint takes the companion API's access
tokens, and adds the chat engine's load (running and waiting requests, KV
cache use, prefix-cache hit rate), which engine serves each chat model, and,
under ``COMPANION_CHAT_ENGINE=auto``, the figures it was chosen by
(`inference.engine_choice`).
"""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from inference.engine import Engine
from inference.engine_choice import Choice
from inference.response_cache import ResponseCache
from memory.accounts import Caller
from server.auth import resolve_user
from server.openai_api.service import EMBEDDING_MODEL_ID


class ServedModel(msgspec.Struct):
    id: str
    role: Literal["chat", "embedding"]
    engine: str | None = None  # a chat model's: "llamacpp", "vllm" or "remote"


class EngineLoad(msgspec.Struct):
    running: int
    waiting: int
    kv_usage: float
    prefix_hit_rate: float | None
    background: int  # of running + waiting: memory jobs of this process, not anyone's turn


class EngineFigures(msgspec.Struct):
    batched_tok_s: float
    single_tpot_s: float
    ready_s: float


class EngineChoice(msgspec.Struct):
    """How ``auto`` chose the default chat model's engine: the probe's figures per engine."""

    engine: str
    reason: str
    measured_at: float  # Unix time
    figures: dict[str, EngineFigures]
    failed: dict[str, str]


class ModelsStatus(msgspec.Struct):
    models: list[ServedModel]
    engine: EngineLoad | None
    engine_choice: EngineChoice | None  # None: COMPANION_CHAT_ENGINE names the engine


def _load(engine: Engine) -> EngineLoad:
    stats = engine.stats()
    queried = stats.prefix_queried_tokens
    hit_rate = round(stats.prefix_hit_tokens / queried, 4) if queried else None
    background = engine.background if isinstance(engine, ResponseCache) else 0
    in_flight = stats.running + stats.waiting
    return EngineLoad(
        stats.running, stats.waiting, round(stats.kv_usage, 4), hit_rate, min(background, in_flight)
    )


def _choice(choice: Choice | None) -> EngineChoice | None:
    if choice is None:
        return None
    figures = {
        name: EngineFigures(
            round(f.batched_tok_s, 1), round(f.single_tpot_s, 4), round(f.ready_s, 1)
        )
        for name, f in choice.figures.items()
    }
    return EngineChoice(choice.backend, choice.reason, choice.when, figures, dict(choice.failed))


class StatusController(Controller):
    path = "/api/v1"
    tags = ["status"]
    opt = {"rate_limit": "api"}
    dependencies = {"user": Provide(resolve_user)}

    @get("/models", cache=False)
    async def models(self, state: State, user: NamedDependency[Caller]) -> ModelsStatus:
        """The chat and embedding models served here, the chat engine's current load, and
        how its engine was chosen."""
        resources = state.resources
        engine, embedder, manager = resources.engine, resources.embedder, resources.models
        models = []
        if engine is not None:
            served_by = manager.state(engine.model_id).backend if manager else None
            models.append(ServedModel(engine.model_id, "chat", served_by))
        if embedder is not None:
            models.append(ServedModel(EMBEDDING_MODEL_ID, "embedding"))
        load = _load(engine) if engine else None
        return ModelsStatus(models, load, _choice(resources.engine_choice))
