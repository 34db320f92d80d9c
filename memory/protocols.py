"""What `memory` needs from a model, as Protocols (memory never imports inference)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt


class Embedder(Protocol):
    """Turns texts into L2-normalised vectors (one row per text)."""

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


class PromptMessage(Protocol):
    """One chat message of a prompt; `inference.types.ChatMessage` fits it as is."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


class JSONGenerator(Protocol):
    """Asks the chat model for one JSON document constrained to ``schema``.

    Returns the raw generated text: `memory` parses and validates it itself, so
    an unusable answer (invalid JSON, wrong shape, empty) is seen as such. Any
    exception means the model could not answer at all (overloaded, deadline,
    engine down). Implementations run at background priority.
    """

    async def generate_json(
        self, prompt_messages: Sequence[PromptMessage], schema: Mapping[str, Any], user_id: str
    ) -> str: ...
