"""One vLLM request as the vLLM engine runs it: its sampling parameters, its
timeline (`Progress`: tokens as they arrive, then its `Finished` event), the
wait for its next output under a deadline, and vLLM's errors in ours.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from inference.errors import EngineUnavailable, InferenceError, InvalidRequest
from inference.text import without_nul
from inference.types import Finished, FinishReason, GenerationRequest, Timings, Usage

# vLLM's finish reasons in ours; any other ends as "stop"
FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class Progress:
    """One request's timeline: when its tokens arrived, and its `Finished` event."""

    def __init__(self, prompt_tokens: int, deadline: float | None) -> None:
        self.prompt_tokens = prompt_tokens
        self.submitted = time.monotonic()
        self.expires = self.submitted + deadline if deadline else None
        self.first: float | None = None
        self.last: float | None = None
        self.gaps: list[float] = []
        self.generated = 0
        self.reported = False  # the observer was told how it ended

    def step(self, output: Any) -> str:
        """Take one step's output; return its new text."""
        completion = output.outputs[0]
        self.generated += len(completion.token_ids)
        text = without_nul(completion.text)
        if text:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            elif self.last is not None:
                self.gaps.append(now - self.last)
            self.last = now
        return text

    def finished(self, reason: FinishReason, output: Any) -> Finished:
        """Queueing and time to first token from vLLM's request timestamps where it has
        them; otherwise as seen here."""
        metrics = output.metrics if output is not None else None
        queue_s = 0.0
        ttft = self.first - self.submitted if self.first is not None else None
        if metrics is not None and metrics.scheduled_ts and metrics.queued_ts:
            queue_s = max(0.0, metrics.scheduled_ts - metrics.queued_ts)
        if metrics is not None and metrics.first_token_latency:
            ttft = metrics.first_token_latency
        cached = (output.num_cached_tokens or 0) if output is not None else 0
        decode_s = time.monotonic() - self.first if self.first is not None else 0.0
        return Finished(
            finish_reason=reason,
            usage=Usage(self.prompt_tokens, cached, self.generated),
            timings=Timings(queue_s=queue_s, time_to_first_token_s=ttft, decode_s=decode_s),
        )


def sampling_params(request: GenerationRequest) -> Any:
    """vLLM's `SamplingParams` for ``request`` (delta outputs; structured output where
    it asks for it); `InvalidRequest` when vLLM refuses the values."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

    s = request.sampling
    structured = None
    if request.json_schema is not None:
        structured = StructuredOutputsParams(json=request.json_schema)
    elif request.grammar is not None:
        structured = StructuredOutputsParams(grammar=request.grammar)
    try:
        return SamplingParams(
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or 0,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            seed=s.seed,
            max_tokens=s.max_tokens,
            stop=list(s.stop) or None,
            ignore_eos=s.ignore_eos,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )
    except (ValueError, TypeError) as exc:
        raise InvalidRequest(str(exc)) from exc


async def next_output(outputs: Any, expires: float | None) -> Any:
    """The next output of ``outputs``; `TimeoutError` once ``expires`` (monotonic) passes."""
    if expires is None:
        return await anext(outputs)
    remaining = expires - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    async with asyncio.timeout(remaining):
        return await anext(outputs)


def mapped_error(exc: Exception) -> InferenceError:
    """A vLLM failure as the `InferenceError` it means for the caller."""
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    if isinstance(exc, EngineDeadError | EngineGenerateError):
        return EngineUnavailable(f"the vLLM engine failed: {exc}; it is being restarted")
    if isinstance(exc, ValueError | TypeError):  # vLLM's validation errors
        return InvalidRequest(str(exc))
    return EngineUnavailable(f"vLLM error: {exc}")
