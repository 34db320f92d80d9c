"""``GET /api/v1/models``: what this server runs, for a signed-in user (the web UI's panel).

``/v1/models`` answers the same question for OpenAI clients but takes API keys
when keys are required; this endpoint takes the companion API's access
tokens, and adds the chat engine's load (running and waiting requests, KV
cache use, prefix-cache hit rate).
"""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Controller, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide

from inference.stats import EngineStats
from memory.accounts import Caller
from server.auth import resolve_user
from server.openai_api.service import EMBEDDING_MODEL_ID


class ServedModel(msgspec.Struct):
    id: str
    role: Literal["chat", "embedding"]


class EngineLoad(msgspec.Struct):
    running: int
    waiting: int
    kv_usage: float
    prefix_hit_rate: float | None


class ModelsStatus(msgspec.Struct):
    models: list[ServedModel]
    engine: EngineLoad | None


def _load(stats: EngineStats) -> EngineLoad:
    queried = stats.prefix_queried_tokens
    hit_rate = round(stats.prefix_hit_tokens / queried, 4) if queried else None
    return EngineLoad(stats.running, stats.waiting, round(stats.kv_usage, 4), hit_rate)


class StatusController(Controller):
    path = "/api/v1"
    tags = ["status"]
    opt = {"rate_limit": "api"}
    dependencies = {"user": Provide(resolve_user)}

    @get("/models", cache=False)
    async def models(self, state: State, user: NamedDependency[Caller]) -> ModelsStatus:
        """The chat and embedding models served here, and the chat engine's current load."""
        engine, embedder = state.resources.engine, state.resources.embedder
        models = [ServedModel(engine.model_id, "chat")] if engine else []
        if embedder is not None:
            models.append(ServedModel(EMBEDDING_MODEL_ID, "embedding"))
        return ModelsStatus(models, _load(engine.stats()) if engine else None)
