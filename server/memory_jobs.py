"""Where `memory` meets `inference` for background jobs: the engine as a `JSONGenerator`.

`memory` never imports `inference`; this adapter lives in `server`, which may
import both, and satisfies `memory.protocols.JSONGenerator` structurally.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from inference.engine import Engine
from inference.types import (
    ChatMessage,
    Finished,
    GenerationRequest,
    Priority,
    Role,
    SamplingParams,
    TextDelta,
)
from memory.protocols import PromptMessage

_ROLES: dict[str, Role] = {"system": "system", "user": "user", "assistant": "assistant"}


class TruncatedOutput(Exception):
    """The model hit ``max_tokens`` before closing its JSON document."""


class EngineJSONGenerator:
    """Schema-constrained, greedy generation at background priority on an `Engine`."""

    def __init__(self, engine: Engine, max_tokens: int = 512, deadline_s: float = 120.0) -> None:
        self._engine = engine
        self._max_tokens = max_tokens
        self._deadline_s = deadline_s

    async def generate_json(
        self, prompt_messages: Sequence[PromptMessage], schema: Mapping[str, Any], user_id: str
    ) -> str:
        """The generated text; engine errors propagate, truncation is `TruncatedOutput`."""
        request = GenerationRequest(
            request_id=f"memory-{uuid.uuid4().hex}",
            user_id=user_id,
            messages=[ChatMessage(_ROLES.get(m.role, "user"), m.content) for m in prompt_messages],
            sampling=SamplingParams(temperature=0.0, max_tokens=self._max_tokens),
            json_schema=dict(schema),
            priority=Priority.BACKGROUND,
            deadline_s=self._deadline_s,
        )
        parts: list[str] = []
        async for event in self._engine.generate(request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished) and event.finish_reason != "stop":
                raise TruncatedOutput(f"generation ended with {event.finish_reason!r}")
        return "".join(parts)
