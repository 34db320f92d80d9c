"""The `Engine` protocol: what the server needs from any inference backend."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from inference.stats import EngineStats
from inference.types import GenerationRequest, PromptSize, StreamEvent


class Engine(Protocol):
    """A running model that streams completions.

    ``generate`` yields `TextDelta` events and ends with one `Finished`; it
    raises `inference.errors.InferenceError` subclasses for requests it cannot
    serve. Closing the iterator early (a client went away) aborts the request.
    """

    @property
    def model_id(self) -> str: ...

    async def start(self) -> None:
        """Load the model and start serving."""

    async def close(self) -> None:
        """Stop serving; requests still in flight end with an error."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the completion of ``request``."""
        ...

    async def measure(self, request: GenerationRequest) -> PromptSize | None:
        """The prompt ``generate`` would compute for ``request`` and the context it must fit
        in, without generating; None when this engine cannot tell ahead (its ``generate``
        still refuses a prompt too long with `ContextLengthExceeded`)."""
        ...

    async def forget(self, user_id: str) -> None:
        """Drop what the engine keeps computed from ``user_id``'s prompts (idle KV,
        host-RAM copies) when the user is erased; a request of theirs still running
        keeps its KV until it ends. ``user_id`` covers the ids ``<user_id>/<end user>``
        that OpenAI callers' ``user`` field makes."""

    async def abort(self, request_id: str) -> None:
        """Stop a request wherever it is (waiting or running); unknown ids are ignored."""

    def stats(self) -> EngineStats:
        """A snapshot of the engine's state and counters."""
        ...

    async def health(self) -> None:
        """Return when the engine can serve; raise `EngineUnavailable` otherwise."""
