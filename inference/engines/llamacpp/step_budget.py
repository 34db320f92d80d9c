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

    seconds = decode(streams) + chunk + per_prompt x prompt tokens (when there are any)

``decode(d)``: the time of a step of ``d`` streams alone, an average kept for each ``d``
seen (decaying by `FORGET` a step); for a ``d`` not seen yet, it is interpolated
between the nearest seen, or scaled from the nearest as ``(d + 1) / (d' + 1)`` (a step
costs about one stream's time on top of its streams). ``chunk`` (the extra pass over
the weights a prompt chunk takes) and ``per_prompt``: least squares of what prompt
steps took beyond ``decode(d)`` against their prompt tokens, each step's weight
decaying by `FORGET` a step, ``chunk`` kept at 0 or more and drawn towards
``decode(1)`` (a pass over the weights) where the prompts do not vary enough to say.
It follows the machine as it warms, as other processes take cores and as
conversations lengthen, and needs no calibration run. Until it has seen steps of both
kinds the configured fixed chunk is used.

One least-squares fit of all three terms (recursive least squares with forgetting)
was used first, and failed where the steps do not vary: one conversation at a time for
a few minutes (thousands of steps of exactly one stream, a prompt alone now and then)
cannot tell a step's fixed cost from a stream's, the fit's covariance lost its
positive definiteness to rounding and its estimates reached 1e22 s, so the next steps
of eight streams were given 400 prompt tokens (a 1.3 s gap) or the fixed chunk. Kept
per stream count, the decode time is measured where it is used
(tests/unit/test_step_budget.py replays the pattern).

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
# The weight, as of that many steps, of a prior for the chunk's cost in the prompt fit:
# one more pass over the weights, about a one-stream step. Prompts of one length (one
# user's turns) cannot tell a chunk's fixed cost from its per-token cost; this decides.
_CHUNK_PRIOR = 4.0


@dataclass
class StepBudget:
    """The prompt tokens the next step may carry, from observed step times."""

    target_s: float  # 0: no target, the fixed chunk
    fixed_chunk: int
    # decode-only steps: stream count -> (decayed sum of seconds, decayed weight)
    decode: dict[int, tuple[float, float]] = field(default_factory=dict)
    # prompt steps, riding along streams (True) or alone (False): decayed sums for
    # extra = chunk + per_prompt x tokens: w, wp, wpp, we, wpe
    sums: dict[bool, list[float]] = field(default_factory=dict)
    chunk_s: float = 0.0
    per_prompt_s: float = 0.0
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
        if self.target_s <= 0 or not self.fitted or self.per_prompt_s <= 0:
            return min(self.fixed_chunk, room)
        left = self.target_s - self.decode_s(decodes) - self.chunk_s
        return max(MIN_PROMPT_TOKENS, min(room, int(left / self.per_prompt_s)))

    def observe(self, decodes: int, prompt_tokens: int, seconds: float) -> None:
        """Fold one step's time into the estimates."""
        if seconds <= 0 or decodes + prompt_tokens == 0 or not math.isfinite(seconds):
            return
        if not prompt_tokens:
            total, weight = self.decode.get(decodes, (0.0, 0.0))
            self.decode[decodes] = (FORGET * total + seconds, FORGET * weight + 1.0)
            self.seen_decode_only += 1
            return
        extra = seconds - self.decode_s(decodes)
        p = float(prompt_tokens)
        sums = self.sums.setdefault(decodes > 0, [0.0] * 5)
        for i, value in enumerate((1.0, p, p * p, extra, p * extra)):
            sums[i] = FORGET * sums[i] + value
        # what a chunk costs beside streams, once seen: a prompt alone is one pass
        # where no stream waits, and its fixed cost is not a chunk's (measured: ~100 ms
        # against ~10, from the first turns' prompt steps)
        riding = self.sums.get(True)
        self._fit_prompt(riding if riding is not None and riding[0] >= 1.0 else sums)
        self.seen_with_prompt += 1

    def decode_s(self, decodes: int) -> float:
        """The estimated time of a step of ``decodes`` streams and no prompt."""
        seen = {d: total / weight for d, (total, weight) in self.decode.items() if weight > 0}
        if not seen or decodes <= 0:
            return 0.0
        if decodes in seen:
            return seen[decodes]
        below = max((d for d in seen if d < decodes), default=None)
        above = min((d for d in seen if d > decodes), default=None)
        if below is not None and above is not None:
            share = (decodes - below) / (above - below)
            return seen[below] + share * (seen[above] - seen[below])
        nearest = below if below is not None else above
        assert nearest is not None
        return seen[nearest] * (decodes + 1) / (nearest + 1)

    def estimate_s(self, decodes: int, prompt_tokens: int) -> float:
        """The estimated time of a step with ``decodes`` streams and ``prompt_tokens``."""
        prompt = self.chunk_s + self.per_prompt_s * prompt_tokens if prompt_tokens else 0.0
        return self.decode_s(decodes) + prompt

    def _fit_prompt(self, sums: list[float]) -> None:
        """chunk and per_prompt from ``sums``: least squares, chunk pulled towards a
        one-stream step's time by `_CHUNK_PRIOR` and kept at 0 or more."""
        w, wp, wpp, we, wpe = sums
        w += _CHUNK_PRIOR
        we += _CHUNK_PRIOR * self.decode_s(1)
        det = w * wpp - wp * wp
        chunk = (wpp * we - wp * wpe) / det if det > 0 else 0.0
        if chunk < 0 or det <= 0:
            chunk = 0.0
        per_prompt = (wpe - chunk * wp) / wpp if wpp > 0 else 0.0
        if math.isfinite(chunk) and math.isfinite(per_prompt):
            self.chunk_s, self.per_prompt_s = chunk, per_prompt
