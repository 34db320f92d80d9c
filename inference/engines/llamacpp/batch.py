"""A request's decode state inside the llama.cpp engine: its share of each batch, its tokens.

`Active` is a request from submission to its `Finished` event. Each step the
engine builds one batch from the running requests (`build_batch`): the next
token of every generating sequence, then chunks of prompts still being
prefilled; after the decode each request with logits samples a token and
`Active.accept` turns it into text, a stop, or the next token to decode.

The engine keeps the lock, the scheduler and the KV placement; nothing here
touches the model's cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from inference.engines.llamacpp.model import BatchItem
from inference.engines.llamacpp.step_budget import StepBudget
from inference.errors import InferenceError
from inference.scheduler import Ticket
from inference.text import TextStream
from inference.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    StreamEvent,
    TextDelta,
    Timings,
    Usage,
)

Sink = Callable[[StreamEvent | InferenceError], None]


class Vocabulary(Protocol):
    """What `Active.accept` needs of the model."""

    def is_end_of_generation(self, token: int) -> bool: ...

    def token_bytes(self, token: int) -> bytes: ...


@dataclass
class Active:
    """A request inside the engine, from submission to its `Finished` event."""

    request: GenerationRequest
    prompt: list[int]
    public_len: int
    sampler: Any
    sink: Sink
    submitted: float
    text: TextStream
    ticket: Ticket[Active] | None = None
    seq: int | None = None  # the KV sequence it runs on, once admitted
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    inter_token: list[float] = field(default_factory=list)
    n_cached: int = 0
    n_past: int = 0  # this request's tokens whose KV is in its sequence
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled, not yet decoded
    cancelled: bool = False
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    def reserved(self) -> int:
        """Cells this request may still add: the rest of its prompt and of its max_tokens."""
        prompt_left = len(self.prompt) - min(self.n_past, len(self.prompt))
        return prompt_left + self.request.sampling.max_tokens - len(self.generated)

    def accept(self, token: int, model: Vocabulary) -> FinishReason | None:
        """Take a sampled token: stream its text; the reason to finish, or None to go on."""
        now = time.monotonic()
        if self.last_token is not None:
            self.inter_token.append(now - self.last_token)
        self.first_token = self.first_token or now
        self.last_token = now
        self.generated.append(token)
        if model.is_end_of_generation(token) and not self.request.sampling.ignore_eos:
            return "stop"
        text = self.text.feed(model.token_bytes(token))
        if text:
            self.sink(TextDelta(text))
        if self.text.stopped:
            return "stop"
        if len(self.generated) >= self.request.sampling.max_tokens:
            return "length"
        self.next_token = token
        return None

    def finished_event(self, reason: FinishReason) -> Finished:
        now = time.monotonic()
        admitted = self.admitted or now
        first = self.first_token
        return Finished(
            finish_reason=reason,
            usage=Usage(len(self.prompt), self.n_cached, len(self.generated)),
            timings=Timings(
                queue_s=admitted - self.submitted,
                time_to_first_token_s=None if first is None else first - self.submitted,
                decode_s=0.0 if first is None else now - first,
            ),
        )


@dataclass(frozen=True, slots=True)
class Span:
    """The tokens one request contributes to a batch, starting at batch index ``start``."""

    active: Active
    start: int
    tokens: list[int]
    logits: bool

    @property
    def logit_index(self) -> int:
        """The batch index whose logits this request samples from (when ``logits``)."""
        return self.start + len(self.tokens) - 1


def build_batch(
    work: list[Active], budget: StepBudget, n_batch: int
) -> tuple[list[BatchItem], list[Span]]:
    """One step's batch: every generating request's next token and the prompt chunks
    that ``budget`` gives a step with that many streams, in sequence order.

    The order is for the per-slot KV layout: there llama.cpp cuts a batch into
    micro-batches of *consecutive* sequence ids taken in batch order (``split_equal``
    with ``sequential``), each a pass over the weights. Streams 3, 0, 1, 2 in that
    order are two passes; 0, 1, 2, 3 one. The unified layout takes any order in one.
    """
    chosen: list[tuple[Active, list[int], bool]] = []
    decodes = 0
    for active in work:
        if active.next_token is not None and active.seq is not None:
            chosen.append((active, [active.next_token], True))
            decodes += 1
    # Prompts are computed first come, first served within a per-step budget: on a
    # compute-bound device a token costs about the same alone or batched, so finishing
    # one prompt before starting the next gives earlier first tokens, and the budget
    # keeps the generating streams flowing (`step_budget`). With none generating, use
    # it all. A user's prompt goes before any background job's admitted earlier (the
    # sort is stable: admission order within a priority).
    left = budget.prompt_tokens(decodes, n_batch)
    for active in sorted(work, key=lambda a: int(a.request.priority)):
        if not active.prefilling or left <= 0 or active.seq is None:
            continue
        n = min(len(active.prompt) - active.n_past, left)
        chunk = active.prompt[active.n_past : active.n_past + n]
        chosen.append((active, chunk, active.n_past + n == len(active.prompt)))
        left -= n
    items: list[BatchItem] = []
    spans: list[Span] = []
    for active, tokens, logits in sorted(chosen, key=lambda c: c[0].seq or 0):
        assert active.seq is not None
        spans.append(Span(active, len(items), tokens, logits))
        last = len(tokens) - 1
        for i, token in enumerate(tokens):
            items.append(BatchItem(token, active.n_past + i, active.seq, logits and i == last))
    return items, spans


def threadsafe_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Sink:
    """A sink the decode thread calls; the events arrive on ``loop``'s ``queue``."""

    def sink(event: StreamEvent | InferenceError) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return sink
