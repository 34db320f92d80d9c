"""/v1 routes: thin handlers over `OpenAIService`; errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from memory.accounts import Caller
from server.auth import resolve_caller
from server.concurrency import GenerationGuard
from server.openai_api import schemas as s
from server.openai_api.errors import openai_exception_handlers
from server.openai_api.service import OpenAIService
from server.sse import UNCOMPRESSED

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def provide_service(state: State) -> OpenAIService:
    resources = state.resources
    return OpenAIService(
        resources.models, resources.embedder, resources.settings.user_loadable_models
    )


def _respond(result: Any) -> Response[Any]:
    if isinstance(result, AsyncIterator):
        return Stream(result, media_type="text/event-stream", headers=_SSE_HEADERS)
    return Response(result)


class OpenAIController(Controller):
    path = "/v1"
    tags = ["openai"]
    opt = {"rate_limit": "v1"}
    dependencies = {
        "caller": Provide(resolve_caller),
        "service": Provide(provide_service, sync_to_thread=False),
    }
    exception_handlers = openai_exception_handlers

    @get("/models")
    async def list_models(
        self, service: NamedDependency[OpenAIService], caller: NamedDependency[Caller]
    ) -> s.ModelList:
        return service.models()

    @get("/models/{model_id:path}")
    async def get_model(
        self,
        model_id: FromPath[str],
        service: NamedDependency[OpenAIService],
        caller: NamedDependency[Caller],
    ) -> s.ModelCard:
        return service.model(model_id.lstrip("/"))

    @post(
        "/chat/completions",
        status_code=200,
        opt={UNCOMPRESSED: True},
        middleware=[GenerationGuard],
    )
    async def chat_completions(
        self,
        data: JSONBody[s.ChatCompletionRequest],
        service: NamedDependency[OpenAIService],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        return _respond(await service.chat(data, caller))

    @post("/completions", status_code=200, opt={UNCOMPRESSED: True}, middleware=[GenerationGuard])
    async def completions(
        self,
        data: JSONBody[s.CompletionRequest],
        service: NamedDependency[OpenAIService],
        caller: NamedDependency[Caller],
    ) -> Response[Any]:
        return _respond(await service.complete(data, caller))

    @post("/embeddings", status_code=200)
    async def embeddings(
        self,
        data: JSONBody[s.EmbeddingRequest],
        service: NamedDependency[OpenAIService],
        caller: NamedDependency[Caller],
    ) -> s.EmbeddingList:
        return await service.embed(data)
