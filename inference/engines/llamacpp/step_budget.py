"""How many prompt tokens a decode step may carry: a budget from a target inter-token latency.

Every step decodes the next token of each generating stream, and prompt tokens of
requests still being prefilled ride along (`batch.build_batch`). Those prompt tokens
are what stretches a step: on a two-core CPU one riding in a decode step costs ~6 ms
(docs/benchmarks.md, "Decode speed: the step-time budget"), so a fixed 128-token chunk
turned a 75 ms decode step into a ~530 ms gap in every other user's stream. Here the
chunk is what fits a target step time instead (``COMPANION_CHAT_ITL_TARGET_MS``):
decodes first, and prefill fills the rest (the idea of Sarathi-Serve's stall-free
batching, and of vLLM's ``max_num_batched_tokens``, except that the budget is time, not
tokens, so one setting fits any CPU and model).

The time a step takes is learnt from the engine's own steps, as

    seconds = fixed + per_decode x decodes + per_prompt x prompt tokens

fitted by recursive least squares with forgetting (each step's weight decays by
`FORGET` per later step): it follows the machine as it warms, as other processes take
cores and as conversations lengthen, and needs no calibration run. Until the fit has
seen steps of both kinds the configured fixed chunk is used.

A floor of `MIN_PROMPT_TOKENS` a step holds whatever the estimate: when the decodes
alone already take longer than the target (many streams on a slow CPU), prompts still
advance, or a waiting user would never get a first token. 16, measured against 8 and 4
at 8 streams on two cores: a lower floor shortens the slowest gaps further (ITL p99 172
-> 105 ms at 4) but triples the later turns' TTFT p90; first tokens matter more. With
nothing generating the whole ``n_batch`` goes to prompts, as before: there is no stream
to keep smooth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MIN_PROMPT_TOKENS = 16
FORGET = 0.97  # a step's weight halves after ~23 later steps
_WARMUP = 3  # steps of each kind (with and without prompt tokens) before the fit is used
_PRIOR = 1e3  # the initial covariance: the first few steps decide the fit
# Forgetting inflates the covariance along directions the steps do not vary (the number
# of streams held constant for minutes): its trace is kept at most this (no wind-up).
_MAX_TRACE = 3 * _PRIOR


@dataclass
class StepBudget:
    """The prompt tokens the next step may carry, from observed step times."""

    target_s: float  # 0: no target, the fixed chunk
    fixed_chunk: int
    # the fit: theta = (fixed, per_decode, per_prompt) seconds, and its covariance
    theta: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    cov: list[list[float]] = field(
        default_factory=lambda: [[_PRIOR if i == j else 0.0 for j in range(3)] for i in range(3)]
    )
    seen_decode_only: int = 0
    seen_with_prompt: int = 0

    @property
    def fitted(self) -> bool:
        return self.seen_decode_only >= _WARMUP and self.seen_with_prompt >= _WARMUP

    def prompt_tokens(self, decodes: int, n_batch: int) -> int:
        """The prompt tokens the next step may carry alongside ``decodes`` generating streams."""
        room = n_batch - decodes
        if decodes == 0:
            return room
        if self.target_s <= 0 or not self.fitted:
            return min(self.fixed_chunk, room)
        fixed, per_decode, per_prompt = self.theta
        if per_prompt <= 0 or not math.isfinite(per_prompt):
            return min(self.fixed_chunk, room)  # not identified yet: no prompt steps varied
        left = self.target_s - fixed - per_decode * decodes
        return max(MIN_PROMPT_TOKENS, min(room, int(left / per_prompt)))

    def observe(self, decodes: int, prompt_tokens: int, seconds: float) -> None:
        """Fold one step's time into the fit (recursive least squares with forgetting)."""
        if seconds <= 0 or decodes + prompt_tokens == 0:
            return
        x = (1.0, float(decodes), float(prompt_tokens))
        p = self.cov
        px = [sum(p[i][j] * x[j] for j in range(3)) for i in range(3)]
        denom = FORGET + sum(x[i] * px[i] for i in range(3))
        gain = [v / denom for v in px]
        error = seconds - self.estimate_s(decodes, prompt_tokens)
        self.theta = [self.theta[i] + gain[i] * error for i in range(3)]
        cov = [[(p[i][j] - gain[i] * px[j]) / FORGET for j in range(3)] for i in range(3)]
        trace = cov[0][0] + cov[1][1] + cov[2][2]
        if trace > _MAX_TRACE:
            cov = [[v * _MAX_TRACE / trace for v in row] for row in cov]
        self.cov = cov
        if prompt_tokens:
            self.seen_with_prompt += 1
        else:
            self.seen_decode_only += 1

    def estimate_s(self, decodes: int, prompt_tokens: int) -> float:
        """The fitted time of a step with ``decodes`` streams and ``prompt_tokens``."""
        fixed, per_decode, per_prompt = self.theta
        return fixed + per_decode * decodes + per_prompt * prompt_tokens
