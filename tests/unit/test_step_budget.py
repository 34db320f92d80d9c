"""The step-time budget: prompt tokens per step from a target step time, fitted to step times.

Step times here come from a known linear cost (the machine the fit has to find), so the
budget the fit gives can be checked against the one that cost implies.
"""

from __future__ import annotations

import math
import random

import pytest

from inference.engines.llamacpp.batch import Active, build_batch
from inference.engines.llamacpp.step_budget import MIN_PROMPT_TOKENS, StepBudget
from inference.text import TextStream
from inference.types import ChatMessage, GenerationRequest, SamplingParams

N_BATCH = 512


def cost(
    decodes: int, prompt: int, fixed: float = 0.004, dec: float = 0.007, tok: float = 0.002
) -> float:
    return fixed + dec * decodes + tok * prompt


def serve(budget: StepBudget, steps: int, rng: random.Random, **machine: float) -> None:
    """Steps as an engine takes them: streams come and go, prompts arrive now and then."""
    for _ in range(steps):
        decodes = rng.randint(1, 12)
        prompt = budget.prompt_tokens(decodes, N_BATCH) if rng.random() < 0.4 else 0
        budget.observe(decodes, prompt, cost(decodes, prompt, **machine))


def test_before_any_step_is_timed_the_fixed_chunk_rides_along() -> None:
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == 128
    assert budget.prompt_tokens(decodes=0, n_batch=N_BATCH) == N_BATCH  # no stream to keep


def test_the_budget_fills_what_the_decodes_leave_of_the_target() -> None:
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    serve(budget, 200, random.Random(1))
    # 150 ms - 4 ms - 8 x 7 ms = 90 ms of prompt at 2 ms a token
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == pytest.approx(45, abs=1)
    assert budget.prompt_tokens(decodes=2, n_batch=N_BATCH) == pytest.approx(66, abs=1)
    assert budget.prompt_tokens(decodes=0, n_batch=N_BATCH) == N_BATCH


def test_prompts_still_advance_when_the_decodes_alone_pass_the_target() -> None:
    budget = StepBudget(target_s=0.05, fixed_chunk=128)
    serve(budget, 200, random.Random(2))
    assert budget.prompt_tokens(decodes=12, n_batch=N_BATCH) == MIN_PROMPT_TOKENS


def test_the_budget_never_overfills_the_batch() -> None:
    budget = StepBudget(target_s=10.0, fixed_chunk=128)
    serve(budget, 100, random.Random(3))
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == N_BATCH - 8


def test_the_budget_follows_a_machine_that_slows_down() -> None:
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    rng = random.Random(4)
    serve(budget, 200, rng)
    before = budget.prompt_tokens(decodes=8, n_batch=N_BATCH)
    serve(budget, 300, rng, tok=0.004)  # another process takes half the core's time
    after = budget.prompt_tokens(decodes=8, n_batch=N_BATCH)
    assert before == pytest.approx(45, abs=1)
    assert after == pytest.approx(22, abs=1)  # 90 ms at 4 ms a token


def test_a_long_run_of_identical_steps_does_not_wind_the_fit_up() -> None:
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    rng = random.Random(5)
    serve(budget, 200, rng)
    for _ in range(30_000):  # eight streams for many minutes, no prompt arriving
        budget.observe(8, 0, cost(8, 0) * rng.uniform(0.97, 1.03))
    serve(budget, 20, rng)  # then the usual traffic again
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == pytest.approx(45, abs=2)
    assert budget.estimate_s(8, 0) == pytest.approx(cost(8, 0), rel=0.02)


def test_minutes_of_one_conversation_leave_a_budget_for_the_next_eight() -> None:
    """What a server does between busy times, replayed from a measured run: one stream
    for thousands of steps and, now and then, a turn's prompt computed alone (a pass
    with a large fixed cost). The fit that preceded this one (recursive least squares)
    diverged here (estimates of 1e22 s) and gave eight streams 400 prompt tokens a step."""
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    rng = random.Random(8)
    serve(budget, 200, rng)
    for step in range(6_000):
        if step % 60 == 59:
            prompt = rng.randint(128, 142)
            budget.observe(0, prompt, (0.1 + 0.0015 * prompt) * rng.uniform(0.95, 1.05))
        else:
            budget.observe(1, 0, cost(1, 0) * rng.uniform(0.9, 1.2))
        for decodes in (1, 8, 16):
            assert math.isfinite(budget.estimate_s(decodes, 32))
    assert budget.estimate_s(1, 0) == pytest.approx(cost(1, 0), rel=0.1)
    # eight streams arrive: not far from what the cost allows (45), and right once seen
    assert MIN_PROMPT_TOKENS <= budget.prompt_tokens(decodes=8, n_batch=N_BATCH) <= 60
    serve(budget, 40, rng)
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == pytest.approx(45, abs=3)


def test_no_target_keeps_the_fixed_chunk() -> None:
    budget = StepBudget(target_s=0.0, fixed_chunk=64)
    serve(budget, 100, random.Random(6))
    assert budget.prompt_tokens(decodes=8, n_batch=N_BATCH) == 64


def _active(prompt_len: int, generating: bool, seq: int) -> Active:
    request = GenerationRequest(
        request_id=f"r{seq}",
        user_id=f"u{seq}",
        messages=[ChatMessage("user", "x")],
        sampling=SamplingParams(max_tokens=16),
    )
    active = Active(
        request=request,
        prompt=list(range(prompt_len)),
        public_len=0,
        sampler=None,
        sink=lambda _event: None,
        submitted=0.0,
        text=TextStream(()),
        seq=seq,
    )
    if generating:
        active.n_past, active.next_token = prompt_len, 7
    return active


def test_a_batch_carries_the_decodes_then_the_prompt_tokens_the_budget_gives() -> None:
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    serve(budget, 200, random.Random(7))
    streams = [_active(50, generating=True, seq=i) for i in range(8)]
    waiting = [_active(300, generating=False, seq=8), _active(300, generating=False, seq=9)]
    items, spans = build_batch([*streams, *waiting], budget, N_BATCH)
    allowed = budget.prompt_tokens(decodes=8, n_batch=N_BATCH)
    assert [len(s.tokens) for s in spans[:8]] == [1] * 8
    assert sum(len(s.tokens) for s in spans[8:]) == allowed == len(items) - 8
    assert spans[8].active is waiting[0] and len(spans) == 9  # first come, first served


def test_a_batch_is_in_sequence_order_whatever_order_the_requests_came_in() -> None:
    """Per slot, llama.cpp takes consecutive sequence ids in batch order into one
    micro-batch (one pass over the weights): 3, 0, 2, 1 would be three passes."""
    budget = StepBudget(target_s=0.15, fixed_chunk=128)
    streams = [_active(50, generating=True, seq=s) for s in (3, 0, 5, 1)]
    prompt = _active(300, generating=False, seq=2)
    prompt.n_past = 40  # part of it computed in earlier steps
    items, spans = build_batch([*streams, prompt], budget, N_BATCH)
    seqs = [item.seq for item in items]
    assert seqs == sorted(seqs) and seqs[:2] == [0, 1] and seqs[-2:] == [3, 5]
    assert [span.active.seq for span in spans] == [0, 1, 2, 3, 5]
    chunk = spans[2]
    assert chunk.active is prompt and chunk.start == 2 and not chunk.logits
    assert [i.pos for i in items[2 : 2 + len(chunk.tokens)]] == list(range(40, 40 + 128))
    for span in spans:  # each request samples from its own last token, if any
        assert items[span.logit_index].seq == span.active.seq
        assert items[span.logit_index].logits == span.logits
    assert sum(item.logits for item in items) == 4  # the four decodes; the prompt goes on
