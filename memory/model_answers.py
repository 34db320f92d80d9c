"""Asking the chat model for one JSON answer and decoding it, for the background jobs.

The summary, fact extraction and profile update jobs each ask the model the
same way (a system and a user message, JSON constrained to a schema, at
background priority) and read the answer the same way: any engine failure,
an empty answer, invalid JSON or a wrong shape is `UnusableAnswer`, whose
message says which. Each job then applies its own checks to what decodes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from memory.errors import UnusableAnswer
from memory.protocols import JSONGenerator

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message of a job's prompt (fits `memory.protocols.PromptMessage`)."""

    role: str
    content: str


async def ask_json(
    generator: JSONGenerator,
    system: str,
    user: str,
    schema: Mapping[str, Any],
    user_id: uuid.UUID,
) -> str:
    """The model's raw answer to ``system`` + ``user``; `UnusableAnswer` if it fails."""
    prompt = [Message("system", system), Message("user", user)]
    try:
        return await generator.generate_json(prompt, schema, str(user_id))
    except Exception as exc:  # any failure of the model is an unusable answer
        raise UnusableAnswer(f"engine error: {type(exc).__name__}: {exc}") from exc


def decode_answer(raw: str, answer_type: type[T]) -> T:
    """``raw`` decoded as ``answer_type``, or `UnusableAnswer` saying why not."""
    if not raw.strip():
        raise UnusableAnswer("empty output")
    try:
        return msgspec.json.decode(raw, type=answer_type)
    except msgspec.ValidationError as exc:
        raise UnusableAnswer(f"schema mismatch: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise UnusableAnswer(f"invalid JSON: {exc}") from exc
