"""Request and response bodies of the OpenAI-compatible API, as msgspec structs.

Requests ignore fields they do not know, as local OpenAI-compatible servers
(vLLM, llama-server) do, so clients that send extras keep working. Known
fields with values we cannot honour are rejected with a 400 naming the
parameter, as OpenAI does. Besides OpenAI's own fields, the llama.cpp/vLLM
extras ``top_k``, ``min_p``, ``repetition_penalty`` and ``ignore_eos`` are
accepted.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class ContentPart(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    text: str | None = None


class Message(msgspec.Struct, forbid_unknown_fields=False):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(msgspec.Struct, forbid_unknown_fields=False):
    include_usage: bool = False


class JsonSchemaFormat(msgspec.Struct, forbid_unknown_fields=False):
    name: str = "response"
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormat(msgspec.Struct, forbid_unknown_fields=False):
    type: str = "text"
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """Fields shared by chat and text completions."""

    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[Message]
    max_completion_tokens: int | None = None
    response_format: ResponseFormat | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[str]


class EmbeddingRequest(msgspec.Struct, forbid_unknown_fields=False):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


# --- responses


class PromptTokensDetails(msgspec.Struct):
    cached_tokens: int


class UsageBody(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(msgspec.Struct):
    role: str
    content: str


class ChatChoice(msgspec.Struct):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None


class _Reply(msgspec.Struct):
    """What every completion, and every chunk of one, starts with (OpenAI's field order)."""

    id: str
    created: int
    model: str


class ChatCompletion(_Reply):
    choices: list[ChatChoice]
    usage: UsageBody
    object: str = "chat.completion"


class Delta(msgspec.Struct, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(_Reply):
    choices: list[ChunkChoice]
    usage: UsageBody | None = None
    object: str = "chat.completion.chunk"


class TextChoice(msgspec.Struct):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class Completion(_Reply):
    choices: list[TextChoice]
    usage: UsageBody | None = None
    object: str = "text_completion"


class EmbeddingItem(msgspec.Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(msgspec.Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct):
    data: list[EmbeddingItem]
    model: str
    usage: EmbeddingUsage
    object: str = "list"


class ModelCard(msgspec.Struct):
    id: str
    created: int
    owned_by: str = "companion"
    object: str = "model"


class ModelList(msgspec.Struct):
    data: list[ModelCard]
    object: str = "list"
