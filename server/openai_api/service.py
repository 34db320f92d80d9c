"""The OpenAI-compatible API's one service: requests in, engine calls, OpenAI bodies out.

Nothing here declares a public prefix: a client's system message is user data,
so KV reuse never crosses API users. Each caller's cache salt is its user id,
narrowed further by the request's ``user`` field when given.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

import msgspec

from inference.embedder import SentenceEmbedder, mark_background
from inference.errors import InferenceError
from inference.manager import ModelManager
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from memory.accounts import Caller
from server.auth import LOCAL_CALLER
from server.openai_api import schemas as s
from server.openai_api.errors import OpenAIError, bad_param, stream_error

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
DEFAULT_MAX_TOKENS = 512
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_FINISH = {"stop": "stop", "length": "length", "timeout": "length", "abort": "stop"}
_STARTED = int(time.time())


# /v1/embeddings per request. MiniLM reads at most 256 tokens of each input (about a
# thousand characters), so longer inputs only cost tokenizing.
MAX_EMBEDDING_INPUTS = 256
MAX_EMBEDDING_CHARS = 256_000


class OpenAIService:
    """Serves /v1 for the chat models of a manager and one embedder (either may be absent).

    A request naming a chat model that is not loaded loads it (within the
    manager's memory budget, unloading idle models: `inference.manager`), when
    the caller may: an administrator, the keys-off local caller (one person's
    machine), or anyone for the models in ``loadable``
    (``COMPANION_USER_LOADABLE_MODELS``, ``*`` for all). Otherwise any caller
    could unload everyone else's idle models by asking for one model after
    another (403 ``model_not_loaded``).
    """

    def __init__(
        self,
        models: ModelManager | None,
        embedder: SentenceEmbedder | None,
        loadable: tuple[str, ...] = (),
    ) -> None:
        self._models = models
        self._embedder = embedder
        self._loadable = loadable

    def models(self) -> s.ModelList:
        """Loaded chat models, then loadable ones, then the embedding model."""
        ids = self._models.ids() if self._models else []
        ids += [EMBEDDING_MODEL_ID] if self._embedder else []
        return s.ModelList(data=[s.ModelCard(id=i, created=_STARTED) for i in ids])

    def model(self, model_id: str) -> s.ModelCard:
        for card in self.models().data:
            if card.id == model_id:
                return card
        raise _unknown_model(model_id)

    # --- chat

    async def chat(
        self, body: s.ChatCompletionRequest, caller: Caller
    ) -> s.ChatCompletion | AsyncIterator[bytes]:
        models = self._chat_models(body.model, caller)
        request = GenerationRequest(
            request_id=f"chatcmpl-{uuid.uuid4().hex}",
            user_id=_cache_salt(caller, body.user),
            messages=_messages(body.messages),
            sampling=_sampling(body, body.max_completion_tokens or body.max_tokens),
            json_schema=_response_schema(body.response_format),
        )
        events = await _started(models.generate(body.model, request))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _chat_chunks(request.request_id, body.model, events, include_usage)
        text, finished = await _collect(events)
        choice = s.ChatChoice(
            0, s.AssistantMessage("assistant", text), _FINISH[finished.finish_reason]
        )
        return s.ChatCompletion(
            id=request.request_id,
            created=int(time.time()),
            model=body.model,
            choices=[choice],
            usage=_usage(finished),
        )

    # --- text completions

    async def complete(
        self, body: s.CompletionRequest, caller: Caller
    ) -> s.Completion | AsyncIterator[bytes]:
        models = self._chat_models(body.model, caller)
        prompt = body.prompt if isinstance(body.prompt, str) else _single_prompt(body.prompt)
        if not prompt:
            raise bad_param("prompt", "prompt must not be empty")
        request = GenerationRequest(
            request_id=f"cmpl-{uuid.uuid4().hex}",
            user_id=_cache_salt(caller, body.user),
            prompt=prompt,
            sampling=_sampling(body, body.max_tokens),
        )
        events = await _started(models.generate(body.model, request))
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _text_chunks(request.request_id, body.model, events, include_usage)
        text, finished = await _collect(events)
        return s.Completion(
            id=request.request_id,
            created=int(time.time()),
            model=body.model,
            choices=[s.TextChoice(0, text, _FINISH[finished.finish_reason])],
            usage=_usage(finished),
        )

    # --- embeddings

    async def embed(self, body: s.EmbeddingRequest) -> s.EmbeddingList:
        if self._embedder is None or body.model != EMBEDDING_MODEL_ID:
            raise _unknown_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        _check_embedding_input(texts)
        # behind the chat turns' own embeddings (emotion, content, retrieval), like the
        # memory jobs: a big /v1 batch must not hold up a user's first token
        mark_background()
        vectors = await self._embedder.embed(texts)
        items = [
            s.EmbeddingItem(index=i, embedding=_encode_vector(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ]
        tokens = sum(await asyncio.to_thread(self._embedder.token_counts, texts))
        return s.EmbeddingList(items, EMBEDDING_MODEL_ID, s.EmbeddingUsage(tokens, tokens))

    def _chat_models(self, model: str, caller: Caller) -> ModelManager:
        if self._models is None or model not in self._models:
            raise _unknown_model(model)
        if self._models.loaded_engine(model) is None and not self._may_load(model, caller):
            raise OpenAIError(
                403,
                f"The model `{model}` is not loaded, and loading it needs an administrator's"
                " key (or the operator's COMPANION_USER_LOADABLE_MODELS).",
                error_type="permission_error",
                param="model",
                code="model_not_loaded",
            )
        return self._models

    def _may_load(self, model: str, caller: Caller) -> bool:
        return (
            caller.is_admin
            or caller is LOCAL_CALLER
            or "*" in self._loadable
            or model in self._loadable
        )


# --- request translation


def _check_embedding_input(texts: list[str]) -> None:
    if not texts or any(not t for t in texts):
        raise bad_param("input", "input must be a non-empty string or array of strings")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise bad_param("input", f"at most {MAX_EMBEDDING_INPUTS} inputs per request")
    if sum(map(len, texts)) > MAX_EMBEDDING_CHARS:
        raise bad_param(
            "input", f"at most {MAX_EMBEDDING_CHARS} characters of input per request, all together"
        )


def _unknown_model(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _cache_salt(caller: Caller, user: str | None) -> str:
    return f"{caller.user_id}/{user}" if user else caller.user_id


def _messages(messages: Sequence[s.Message]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise bad_param("messages", "messages must contain at least one message")
    converted = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.role)
        if role is None:
            raise bad_param(f"messages[{i}].role", f"unsupported role {message.role!r}")
        converted.append(ChatMessage(role, _text_content(message, i)))  # type: ignore[arg-type]
    return tuple(converted)


def _text_content(message: s.Message, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise bad_param(f"messages[{index}].content", f"unsupported content part {part.type!r}")
        texts.append(part.text)
    return "".join(texts)


def _single_prompt(prompts: list[str]) -> str:
    if len(prompts) != 1:
        raise bad_param("prompt", "exactly one prompt is supported")
    return prompts[0]


def _sampling(body: s.SamplingFields, max_tokens: int | None) -> SamplingParams:
    _check_ranges(body, max_tokens)
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
        max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
        stop=stop,
        ignore_eos=body.ignore_eos,
    )


def _check_ranges(body: s.SamplingFields, max_tokens: int | None) -> None:
    checks: list[tuple[bool, str, str]] = [
        (body.n == 1, "n", "only n=1 is supported"),
        (_in(body.temperature, 0, 2), "temperature", "must be in [0, 2]"),
        (body.top_p is None or 0 < body.top_p <= 1, "top_p", "must be in (0, 1]"),
        (max_tokens is None or max_tokens >= 1, "max_tokens", "must be at least 1"),
        (_in(body.presence_penalty, -2, 2), "presence_penalty", "must be in [-2, 2]"),
        (_in(body.frequency_penalty, -2, 2), "frequency_penalty", "must be in [-2, 2]"),
        (not isinstance(body.stop, list) or len(body.stop) <= 4, "stop", "at most 4 sequences"),
    ]
    for ok, param, message in checks:
        if not ok:
            raise bad_param(param, f"{param}: {message}")


def _in(value: float | None, low: float, high: float) -> bool:
    return value is None or low <= value <= high


def _response_schema(response_format: s.ResponseFormat | None) -> dict[str, Any] | None:
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return {"type": "object"}
    if response_format.type == "json_schema":
        schema = response_format.json_schema.schema if response_format.json_schema else None
        if not schema:
            raise bad_param("response_format", "json_schema.schema is required")
        return schema
    raise bad_param("response_format", f"unsupported response_format type {response_format.type!r}")


# --- responses


async def _started(
    events: AsyncGenerator[StreamEvent, None],
) -> AsyncGenerator[StreamEvent, None]:
    """Wait for the first event, so refusals (overload, bad input) become HTTP errors
    before a streaming response has sent its headers."""
    first = await anext(events)

    async def replay() -> AsyncGenerator[StreamEvent, None]:
        async with aclosing(events):  # closing us aborts the engine request
            yield first
            async for event in events:
                yield event

    return replay()


async def _collect(events: AsyncGenerator[StreamEvent, None]) -> tuple[str, Finished]:
    parts: list[str] = []
    async with aclosing(events):
        async for event in events:
            if isinstance(event, TextDelta):
                parts.append(event.text)
            else:
                return "".join(parts), event
    raise OpenAIError(500, "the engine ended without finishing", error_type="server_error")


def _usage(finished: Finished) -> s.UsageBody:
    usage = finished.usage
    return s.UsageBody(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
        prompt_tokens_details=s.PromptTokensDetails(usage.cached_prompt_tokens),
    )


def _sse(body: msgspec.Struct | str) -> bytes:
    data = body if isinstance(body, str) else msgspec.json.encode(body).decode()
    return f"data: {data}\n\n".encode()


async def _chat_chunks(
    request_id: str, model: str, events: AsyncGenerator[StreamEvent, None], include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: s.Delta, finish: str | None = None) -> bytes:
        choice = s.ChunkChoice(0, delta, finish)
        return _sse(s.ChatCompletionChunk(request_id, created, model, [choice]))

    yield chunk(s.Delta(role="assistant", content=""))
    async with aclosing(events):
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    yield chunk(s.Delta(content=event.text))
                    continue
                yield chunk(s.Delta(), _FINISH[event.finish_reason])
                if include_usage:
                    usage = _usage(event)
                    yield _sse(s.ChatCompletionChunk(request_id, created, model, [], usage))
        except InferenceError as exc:  # after the headers: the error goes in the stream
            yield _sse(msgspec.json.encode(stream_error(exc)).decode())
    yield _sse("[DONE]")


async def _text_chunks(
    request_id: str, model: str, events: AsyncGenerator[StreamEvent, None], include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())
    async with aclosing(events):
        try:
            async for event in events:
                if isinstance(event, TextDelta):
                    choice = s.TextChoice(0, event.text, None)
                    yield _sse(s.Completion(request_id, created, model, [choice]))
                    continue
                final = s.TextChoice(0, "", _FINISH[event.finish_reason])
                yield _sse(s.Completion(request_id, created, model, [final]))
                if include_usage:
                    yield _sse(s.Completion(request_id, created, model, [], _usage(event)))
        except InferenceError as exc:  # after the headers: the error goes in the stream
            yield _sse(msgspec.json.encode(stream_error(exc)).decode())
    yield _sse("[DONE]")


def _encode_vector(vector: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode()
    return [float(x) for x in vector]
