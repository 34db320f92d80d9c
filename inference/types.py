"""What goes into an engine and what comes out of it.

A `GenerationRequest` is everything an engine needs for one completion. The
engine answers with a stream of `TextDelta` events that ends with exactly one
`Finished` event (finish reason, usage, timings). Errors that stop a request
before or during generation are raised from the stream (see `inference.errors`).
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "abort", "timeout"]


class Priority(enum.IntEnum):
    """Lower value runs first: a user waiting on a reply beats background jobs."""

    INTERACTIVE = 0
    BACKGROUND = 1


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling knobs; ``temperature == 0`` means greedy (deterministic)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate max_tokens regardless (benchmarks)

    def problems(self) -> list[str]:
        """Why these parameters are unusable (empty when they are fine)."""
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.top_k >= 0, "top_k must be >= 0"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (self.max_tokens >= 1, "max_tokens must be >= 1"),
            (len(self.stop) <= 8 and all(self.stop), "stop: at most 8 non-empty strings"),
        ]
        return [message for ok, message in checks if not ok]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One completion. Give exactly one of ``messages`` (rendered with the model's
    chat template), ``prompt`` (raw text, tokenized as is) or ``prompt_tokens``.

    ``user_id`` salts every cache: KV computed for one user's conversation is
    never reused for another user. The exception is the public prefix: the
    first ``public_prefix_messages`` messages (or ``public_prefix_tokens``
    tokens) are operator-written text with no user data in it, such as the
    persona prompt, and may be computed once and shared by everyone.
    """

    request_id: str
    user_id: str
    messages: Sequence[ChatMessage] = ()
    prompt: str = ""
    prompt_tokens: Sequence[int] = ()
    conversation_id: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None  # GBNF; mutually exclusive with json_schema
    priority: Priority = Priority.INTERACTIVE
    deadline_s: float | None = None  # seconds from submission until the request is dropped
    public_prefix_messages: int = 0
    public_prefix_tokens: int = 0

    def problems(self) -> list[str]:
        """Why this request cannot be served as given (empty when it can)."""
        found = list(self.sampling.problems())
        if sum(map(bool, (self.messages, self.prompt, self.prompt_tokens))) != 1:
            found.append("give exactly one of messages, prompt or prompt_tokens")
        if self.json_schema is not None and self.grammar is not None:
            found.append("give at most one of json_schema or grammar")
        if not self.request_id or not self.user_id:
            found.append("request_id and user_id are required")
        if self.deadline_s is not None and self.deadline_s <= 0:
            found.append("deadline_s must be > 0")
        if not 0 <= self.public_prefix_messages <= len(self.messages):
            found.append("public_prefix_messages must be within the messages")
        return found

    def cache_salt(self) -> str:
        """The user's prefix-cache key, as vLLM's ``cache_salt`` (or OpenAI's ``user``):
        the same for all of a user's requests, and not the user id itself, so upstream
        servers and their logs never learn who the user is."""
        return _digest("kv", self.user_id)

    def session_key(self) -> str:
        """The conversation's routing key (``X-Session-ID``, which vLLM's router hashes to
        a replica): the same for every turn of one user's conversation."""
        return _digest("session", self.user_id, self.conversation_id or "")


def owned_by(owner: str, user_id: str) -> bool:
    """Whether a request's ``user_id`` (``owner``) is ``user_id`` or one of its end users."""
    return owner == user_id or owner.startswith(f"{user_id}/")


def _digest(kind: str, *parts: str) -> str:
    joined = "\x00".join(("companion", kind, *parts))
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class PromptSize:
    """A request's prompt measured by the engine that would serve it (`Engine.measure`)."""

    prompt_tokens: int  # as ``generate`` would compute them: template, special tokens and all
    context_tokens: int  # the most one sequence may hold, prompt and reply together

    def fits(self, max_tokens: int) -> bool:
        return self.prompt_tokens + max_tokens <= self.context_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    """The next piece of generated text (always whole UTF-8 characters)."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Timings:
    """Seconds: waiting for admission, from submission to the first token, decoding after it."""

    queue_s: float
    time_to_first_token_s: float | None
    decode_s: float


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    timings: Timings


StreamEvent = TextDelta | Finished
