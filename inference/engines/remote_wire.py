"""The OpenAI wire format as the remote engine speaks it: request bodies, error
statuses and the streamed reply's chunks.

A reply is read as Server-Sent Events up to ``[DONE]``; each event is decoded
into a typed chunk (`Chunk`). A chunk that is not an OpenAI completion chunk,
or that reports an upstream error, raises `BadStream`. An HTTP error status is
`ReplicaFailed` (5xx: another replica may be tried) or the `InferenceError`
it means (4xx).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource

from inference.errors import (
    ContextLengthExceeded,
    EngineOverloaded,
    InferenceError,
    InvalidRequest,
)
from inference.types import FinishReason, GenerationRequest, Usage


class ReplicaFailed(Exception):
    """The replica failed before sending anything: another may be tried."""


class BadStream(Exception):
    """The replica's reply cannot be read as a completion stream."""


def request_body(request: GenerationRequest, model: str, flavor: str) -> dict[str, Any]:
    """The streamed completion request for ``request`` to ``model`` upstream;
    `InvalidRequest` when it cannot be served as given."""
    problems = request.problems()
    if problems:
        raise InvalidRequest("; ".join(problems))
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
    }
    body.update(prompt_fields(request))
    body.update(_optional_fields(request))
    body.update(_routing_fields(request, flavor))
    return body


def _routing_fields(request: GenerationRequest, flavor: str) -> dict[str, Any]:
    if flavor == "vllm":
        return {"cache_salt": request.cache_salt(), "priority": int(request.priority)}
    return {"user": request.cache_salt()}


def prompt_fields(request: GenerationRequest) -> dict[str, Any]:
    """The prompt as OpenAI's APIs take it: chat messages, a text, or token ids."""
    if request.messages:
        return {"messages": [{"role": m.role, "content": m.content} for m in request.messages]}
    if request.prompt:
        return {"prompt": request.prompt}
    return {"prompt": list(request.prompt_tokens)}  # OpenAI's completions accept token ids


def _optional_fields(request: GenerationRequest) -> dict[str, Any]:
    sampling = request.sampling
    fields: dict[str, Any] = {}
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.top_k:
        fields["top_k"] = sampling.top_k
    if sampling.min_p:
        fields["min_p"] = sampling.min_p
    if sampling.repetition_penalty != 1.0:
        fields["repetition_penalty"] = sampling.repetition_penalty
    if sampling.ignore_eos:
        fields["ignore_eos"] = True
    if request.json_schema is not None:
        schema = {"name": "response", "schema": request.json_schema}
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    if request.grammar is not None:
        fields["grammar"] = request.grammar  # llama-server's extension
    return fields


async def check_status(response: httpx.Response) -> None:
    """Raise what an error status means: `ReplicaFailed` (5xx) or an `InferenceError`."""
    if response.status_code < 400:
        return
    detail = (await response.aread()).decode(errors="replace")[:500]
    if response.status_code >= 500:
        raise ReplicaFailed(f"HTTP {response.status_code}: {detail}")
    raise _upstream_error(response.status_code, detail)


def _upstream_error(status: int, detail: str) -> InferenceError:
    message = f"upstream refused the request (HTTP {status}): {detail}"
    if status == 413 or "context_length" in detail:
        return ContextLengthExceeded(message)
    if status == 429:
        return EngineOverloaded(message)
    return InvalidRequest(message)


# What is read of a streamed chunk; other fields are ignored.


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None  # chat completions
    text: str | None = None  # completions
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _ChunkError(msgspec.Struct):
    message: str = ""


class Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None  # required, unless the chunk reports an error
    usage: _ChunkUsage | None = None
    error: _ChunkError | str | None = None  # how vLLM (and OpenAI) report a failure mid-stream


async def chunks(source: EventSource) -> AsyncIterator[Chunk]:
    """The reply's chunks, up to its ``[DONE]``."""
    async for sse in source.aiter_sse():
        if sse.data.strip() == "[DONE]":
            return
        if sse.data:  # an event of only an id or a retry field carries nothing
            yield _decode_chunk(sse.data)


def _decode_chunk(data: str) -> Chunk:
    try:
        chunk = msgspec.json.decode(data, type=Chunk)
    except msgspec.DecodeError as exc:  # not JSON, or JSON of another shape
        raise BadStream(f"sent a malformed chunk ({exc}): {data[:200]!r}") from exc
    if chunk.error is not None:
        detail = chunk.error if isinstance(chunk.error, str) else chunk.error.message
        raise BadStream(f"reported an error: {detail[:500]}")
    if chunk.choices is None:
        raise BadStream(f"sent a chunk without `choices`: {data[:200]!r}")
    return chunk


def read_chunk(chunk: Chunk) -> tuple[str, FinishReason | None, Usage | None]:
    """A chunk's text, finish reason (once it finishes) and usage (where it reports one)."""
    text, finish = "", None
    finish_reason: FinishReason | None = None
    for choice in chunk.choices or ():
        content = choice.delta.content if choice.delta is not None else None
        text += content or choice.text or ""
        finish = choice.finish_reason or finish
    if finish:
        finish_reason = "length" if finish == "length" else "stop"
    return text, finish_reason, _read_usage(chunk.usage)


def _read_usage(usage: _ChunkUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        cached_prompt_tokens=(details.cached_tokens if details else None) or 0,
        completion_tokens=usage.completion_tokens,
    )
