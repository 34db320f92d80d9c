"""Fitting a turn's prompt (`server.turn.prompt`) to the engine's context.

Fitting. The prompt is measured in the engine's own tokens (`Engine.measure`:
the chat template and tokenizer ``generate`` uses). When it and the reply's
``max_tokens`` do not fit in the context, the oldest history goes first (the
rolling summary already covers what came before it), then the volatile
context, then the summary, then the profile hint. So no message in the history
can make a later turn fail, whatever its length.

Before anything of a turn is stored or changed, `PromptFitter.check_message`
refuses a message that could not fit even with only the persona before it and
room for the reply (`ContextLengthExceeded`, a 413). No more is held back for
memories or history: a message that fills the context has its turn answered
without them, and the next turn leaves it out of the history first. (A fixed
reserve refused every message of a persona whose replies take most of a small
context, such as 1,500 of 2,048 tokens.) The message limit
in characters (``COMPANION_MAX_MESSAGE_CHARS``) cannot do this alone: 8,000
characters of CJK text are three times the tokens of 8,000 of English.

Measuring costs a tokenization (a millisecond or two for a long prompt, plus
the round trip to the engine process). It is skipped while an upper bound
already fits: a byte-level BPE tokenizer makes at most one token per UTF-8
byte; the template adds at most `TEMPLATE_TOKENS_PER_MESSAGE` per message and
`TEMPLATE_TOKENS` once; and the context size is known from an earlier measure.
An everyday turn of a few thousand characters never measures. If a template
broke the bound, ``generate`` would still refuse the prompt (the 413 comes from
the engine then, as it did before fitting).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from inference.engine import Engine
from inference.errors import ContextLengthExceeded
from inference.types import ChatMessage, GenerationRequest, PromptSize
from server.turn.prompt import PromptParts

TEMPLATE_TOKENS_PER_MESSAGE = 16  # role markers and separators
TEMPLATE_TOKENS = 128  # text a template adds once (a default system line, dates)


# What goes after the history, in this order, when even no history does not fit.
_LAST_TRIMS: tuple[Callable[[PromptParts], PromptParts], ...] = (
    lambda p: dataclasses.replace(p, context=""),
    lambda p: dataclasses.replace(p, summary=None),
    lambda p: dataclasses.replace(p, profile=None),
)


def upper_bound(messages: Sequence[ChatMessage]) -> int:
    """At least as many tokens as any byte-level tokenizer and chat template make."""
    content = sum(len(m.content.encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in messages)
    return content + TEMPLATE_TOKENS


class PromptFitter:
    """Fits turn prompts to engines; one per process (it remembers each model's context)."""

    def __init__(self) -> None:
        self._contexts: dict[str, int] = {}

    async def check_message(self, engine: Engine, request: GenerationRequest) -> None:
        """Refuse (`ContextLengthExceeded`) a request, the persona and the message alone,
        that leaves no room for its reply's ``max_tokens``."""
        room = request.sampling.max_tokens
        size = await self._size(engine, request, room)
        if size is not None and not size.fits(room):
            limit = size.context_tokens - room
            raise ContextLengthExceeded(
                f"the message is too long for this model: {size.prompt_tokens} tokens with the"
                f" persona's instructions, where a message may take at most {limit}; shorten"
                " it or send it in parts"
            )

    async def fit(
        self,
        engine: Engine,
        parts: PromptParts,
        request_for: Callable[[PromptParts], GenerationRequest],
    ) -> GenerationRequest:
        """The request for ``parts``, trimmed (see the module doc) until it fits."""
        request = request_for(parts)
        room = request.sampling.max_tokens
        size = await self._size(engine, request, room)
        if size is None or size.fits(room):
            return request
        shortened = await self._fewest_dropped(engine, parts, request_for, room)
        if shortened is not None:
            return shortened
        trimmed = parts.trimmed(len(parts.history))
        for trim in _LAST_TRIMS:
            trimmed = trim(trimmed)
            request = request_for(trimmed)
            size = await self._size(engine, request, room)
            if size is None or size.fits(room):
                return request
        assert size is not None
        raise ContextLengthExceeded(
            f"the prompt ({size.prompt_tokens} tokens) and reply ({room}) exceed the"
            f" context of {size.context_tokens} tokens even without any history"
        )

    async def _fewest_dropped(
        self,
        engine: Engine,
        parts: PromptParts,
        request_for: Callable[[PromptParts], GenerationRequest],
        room: int,
    ) -> GenerationRequest | None:
        """The request that keeps the most history and fits (a binary search: dropping
        more never adds tokens); None when even no history does not fit."""
        best: GenerationRequest | None = None
        low, high = 1, len(parts.history)  # the answer is in [low, high], if any
        while low <= high:
            middle = (low + high) // 2
            request = request_for(parts.trimmed(middle))
            size = await self._size(engine, request, room)
            if size is None or size.fits(room):
                best, high = request, middle - 1
            else:
                low = middle + 1
        return best

    async def _size(
        self, engine: Engine, request: GenerationRequest, room: int
    ) -> PromptSize | None:
        """The request measured; None when it surely fits or the engine cannot tell."""
        known = self._contexts.get(engine.model_id)
        if known is not None and upper_bound(request.messages) + room <= known:
            return None
        size = await engine.measure(request)
        if size is not None:
            self._contexts[engine.model_id] = size.context_tokens
        return size
