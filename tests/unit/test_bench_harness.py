"""The benchmark harness (scripts/bench_harness.py) and its table (scripts/bench_report.py):
the arithmetic, and the runner with sessions that answer at once. No server."""

from __future__ import annotations

import itertools
import statistics
import time

import pytest
from script_modules import load_script

h = load_script("bench_harness")
report = load_script("bench_report")


def record(**overrides: object) -> object:
    fields: dict[str, object] = {
        "session": 0,
        "turn": 1,
        "due_s": 0.0,
        "held_s": 0.0,
        "ttft_s": 0.5,
        "tpot_s": 0.05,
        "e2e_s": 2.0,
        "itl_s": [0.05, 0.05],
        "output_tokens": 3,
        "prompt_tokens": 10,
        "cached_tokens": 0,
    }
    return h.RequestRecord(**(fields | overrides))


# --- percentiles


def test_percentiles_interpolate_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]  # unsorted on purpose
    assert h.percentile(values, 0) == 1.0
    assert h.percentile(values, 100) == 4.0
    assert h.percentile(values, 50) == pytest.approx(2.5)
    assert h.percentile(values, 90) == pytest.approx(3.7)
    assert h.percentile([], 50) is None


def test_distribution_has_the_mean_and_every_quantile() -> None:
    d = h.distribution(float(i) for i in range(1, 101))
    assert d["mean"] == pytest.approx(50.5)
    assert d["p50"] == pytest.approx(50.5)
    assert d["p99"] == pytest.approx(99.01)
    assert set(d) == {"mean", "p50", "p90", "p95", "p99"}
    assert h.distribution([]) == dict.fromkeys(d)


# --- TPOT and ITL


def test_itls_are_every_gap_between_chunks() -> None:
    assert h.itls([0.5, 0.6, 0.8, 1.1]) == pytest.approx([0.1, 0.2, 0.3])
    assert h.itls([0.5]) == []
    assert h.itls([]) == []


def test_tpot_is_the_time_after_the_first_token_per_later_token() -> None:
    assert h.tpot(0.5, 2.5, 5) == pytest.approx(0.5)  # 2 s for 4 tokens after the first
    assert h.tpot(0.5, 0.5, 1) is None  # one token: no time per output token
    assert h.tpot(None, 2.0, 5) is None


def test_a_record_counts_from_when_it_was_due_and_prefers_the_servers_token_count() -> None:
    sample = h.Sample(chunk_times=[0.2, 0.3, 0.5], end_s=0.6, output_tokens=6)
    r = h.record_from(3, 2, due_s=10.0, held_s=1.0, s=sample)
    assert r.ttft_s == pytest.approx(1.2)
    assert r.e2e_s == pytest.approx(1.6)
    assert r.output_tokens == 6  # usage beats chunk counting (a chunk may hold several)
    assert r.tpot_s == pytest.approx((1.6 - 1.2) / 5)
    assert r.itl_s == pytest.approx([0.1, 0.2])  # gaps do not move with the hold
    counted = h.record_from(0, 1, 0.0, 0.0, h.Sample(chunk_times=[0.1, 0.2], end_s=0.2))
    assert counted.output_tokens == 2


def test_a_failed_sample_has_no_e2e_or_tpot() -> None:
    r = h.record_from(0, 1, 0.0, 0.0, h.Sample(chunk_times=[0.1], end_s=0.4, error="HTTP 503"))
    assert not r.ok
    assert r.e2e_s is None and r.tpot_s is None


# --- goodput


def test_goodput_counts_requests_that_meet_every_target() -> None:
    slos = h.parse_slos(["ttft=1.0", "tpot=0.1"])
    assert slos == {"ttft": 1.0, "tpot": 0.1}
    records = [
        record(),  # meets both
        record(ttft_s=1.5),  # too slow to start
        record(tpot_s=0.2),  # too slow to stream
        record(ttft_s=1.0, tpot_s=0.1),  # on the line: meets
        record(error="boom", ttft_s=None, tpot_s=None, e2e_s=None),  # failed: never good
        record(tpot_s=None, output_tokens=1),  # no TPOT to judge: not held against it
    ]
    result = h.goodput(records, slos, wall_s=2.0)
    assert result["good_requests"] == 3
    assert result["good_fraction"] == pytest.approx(3 / 6)
    assert result["goodput_req_s"] == pytest.approx(1.5)


def test_the_itl_target_applies_to_a_requests_largest_gap() -> None:
    slos = {"itl": 0.2}
    assert h.meets(record(itl_s=[0.1, 0.15]), slos)
    assert not h.meets(record(itl_s=[0.1, 0.25, 0.1]), slos)


def test_no_targets_means_every_successful_request_is_good() -> None:
    result = h.goodput([record(), record(error="x")], {}, wall_s=1.0)
    assert result["good_requests"] == 1


@pytest.mark.parametrize("bad", ["ttfb=1", "ttft", "ttft=fast", "ttft=0", "tpot=-1"])
def test_bad_slos_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="--slo"):
        h.parse_slos([bad])


# --- load shapes


def test_load_shapes_parse() -> None:
    assert h.parse_load("fixed:4") == h.LoadShape("fixed", 4)
    assert h.parse_load("8") == h.LoadShape("fixed", 8)
    assert h.parse_load("poisson:0.5", seed=7) == h.LoadShape("poisson", 0.5, 7)
    assert h.parse_load("poisson:2").label == "poisson 2/s"
    for bad in ("fixed:0", "fixed:1.5", "poisson:0", "poisson:inf", "burst:3", "fixed:x"):
        with pytest.raises(ValueError, match=f"load {bad!r}"):
            h.parse_load(bad)


def test_poisson_arrivals_are_seeded() -> None:
    a = h.poisson_arrivals(2.0, 50, seed=1)
    assert a == h.poisson_arrivals(2.0, 50, seed=1)
    assert a != h.poisson_arrivals(2.0, 50, seed=2)
    assert a[0] == 0.0
    assert all(later >= earlier for earlier, later in itertools.pairwise(a))


@pytest.mark.parametrize("rate", [0.5, 4.0, 40.0])
def test_poisson_arrivals_have_the_asked_mean_rate(rate: float) -> None:
    count = 20_000
    arrivals = h.poisson_arrivals(rate, count, seed=3)
    gaps = h.itls(arrivals)
    # The mean gap of 20k exponential draws is within 3% of 1/rate (about 4 standard
    # errors); their spread matches an exponential's (standard deviation = mean).
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.05)
    assert (count - 1) / arrivals[-1] == pytest.approx(rate, rel=0.03)


def test_round_robin_orders_turns_across_sessions() -> None:
    assert h.round_robin([2, 1, 3]) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (2, 2)]
    assert h.round_robin([]) == []


# --- the runner, with sessions that answer at once


class Instant:
    def __init__(self, turns: int, fail_at: int | None = None) -> None:
        self.turns = turns
        self.fail_at = fail_at
        self.sent: list[int] = []
        self.prepared = False

    async def prepare(self) -> None:
        self.prepared = True

    async def request(self, turn: int) -> object:
        assert self.prepared
        assert self.sent == list(range(turn))  # turns in order, one at a time
        self.sent.append(turn)
        if turn == self.fail_at:
            return h.Sample(end_s=0.01, error="boom")
        return h.Sample(chunk_times=[0.01, 0.02, 0.03], end_s=0.03)


@pytest.mark.parametrize("load", ["fixed:2", "poisson:1000"])
async def test_every_turn_runs_in_order_and_a_failure_ends_its_session(load: str) -> None:
    sessions = [Instant(3), Instant(3, fail_at=1), Instant(2)]
    run = await h.run_load(h.parse_load(load), sessions)
    assert [s.sent for s in sessions] == [[0, 1, 2], [0, 1], [0, 1]]
    assert len(run.records) == 7
    summary = h.summarize(run, {"ttft": 10.0})
    assert summary["ok"] == 6 and summary["errors"] == 1
    assert summary["output_tokens"] == 18
    assert summary["goodput"]["good_requests"] == 6
    assert summary["first_errors"] == ["boom"]


async def test_a_ramp_starts_the_users_one_after_another() -> None:
    sessions = [Instant(2) for _ in range(4)]
    run = await h.run_load(h.LoadShape("fixed", 4, ramp_s=0.2), sessions)
    first = sorted(r.due_s for r in run.records if r.turn == 1)
    # all at once without a ramp; here 0.05 s apart (sleeps may run late, never early)
    assert [b - a for a, b in itertools.pairwise(first)] == [pytest.approx(0.05, abs=0.04)] * 3
    assert all(due >= 0.05 * i for i, due in enumerate(first))
    assert h.LoadShape("fixed", 4, ramp_s=0.2).label == "fixed C=4, ramp 0.2s"


async def test_users_pause_between_turns_when_asked_to_think() -> None:
    shape = h.parse_load("fixed:3,think=0.05", seed=1)
    assert shape == h.LoadShape("fixed", 3, 1, think_s=0.05)
    assert shape.label == "fixed C=3, think 0.05s"
    run = await h.run_load(shape, [Instant(3) for _ in range(3)])
    gaps = {}
    for session in range(3):
        due = sorted(r.due_s for r in run.records if r.session == session)
        gaps[session] = [b - a for a, b in itertools.pairwise(due)]
    # each user pauses 0..0.1 s before a later turn, each for their own time: the
    # closed loop no longer sends the next turns of all users in the same instant
    assert all(0 <= g <= 0.1 + 0.04 for pauses in gaps.values() for g in pauses)
    assert len({round(pauses[0], 3) for pauses in gaps.values()}) == 3
    assert sum(r.held_s for r in run.records) < 0.05  # a pause is not a latency
    for bad in ("fixed:3,think=-1", "fixed:3,wait=1", "poisson:1,think=1", "fixed:3,think=x"):
        with pytest.raises(ValueError, match="think=SECONDS"):
            h.parse_load(bad)


def test_the_gaps_that_carry_another_users_prompt_are_counted() -> None:
    # a streams from 1.0 s in gaps of 0.1 s; b waits for its first token from 1.15 to 1.3 s
    a = record(due_s=0.0, ttft_s=1.0, itl_s=[0.1] * 5)
    b = record(due_s=1.15, ttft_s=0.15, itl_s=[0.1])
    # a's gaps 1.1-1.2 and 1.2-1.3 overlap b's wait; b's one gap (1.3-1.4) no one's
    assert h.beside_prompt([a, b]) == pytest.approx(2 / 6)
    lockstep = [record(due_s=0.0, ttft_s=1.0, itl_s=[0.1] * 5) for _ in range(3)]
    assert h.beside_prompt(lockstep) == 0
    assert h.beside_prompt([]) is None


def test_the_table_has_a_row_per_target_and_load() -> None:
    run = h.LoadRun(h.LoadShape("fixed", 1), [record(), record(ttft_s=0.7)], wall_s=1.0)
    summaries = [{"target": name, **h.summarize(run, {})} for name in ("a", "b")]
    lines = report.format_table(summaries).splitlines()
    assert len(lines) == 4
    assert lines[2].split()[:4] == ["a", "fixed", "C=1", "2"]
    assert "600" in lines[2].split()  # ttft p50, in ms
    overhead = report.overhead_lines(summaries, "a")
    assert overhead == [
        "b - a, fixed C=1: ttft p50 +0.0 ms, ttft p99 +0.0 ms, tpot p50 +0.0 ms, "
        "tpot p99 +0.0 ms, e2e p50 +0.0 ms, e2e p99 +0.0 ms"
    ]


def test_repeats_merge_into_one_run() -> None:
    shape = h.LoadShape("fixed", 2)
    first = h.LoadRun(shape, [record(session=0), record(session=1)], wall_s=2.0)
    second = h.LoadRun(shape, [record(session=0, ttft_s=0.9)], wall_s=1.0)
    merged = h.merge_runs([first, second])
    assert [r.session for r in merged.records] == [0, 1, 2]
    assert merged.wall_s == 3.0
    assert h.summarize(merged, {})["request_throughput_req_s"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same load shape"):
        h.merge_runs([first, h.LoadRun(h.LoadShape("fixed", 4), [], 1.0)])


class Blocking(Instant):
    """Holds the event loop for ``block_s`` in its first request, as an engine that
    decodes on the loop's thread would."""

    def __init__(self, turns: int, block_s: float) -> None:
        super().__init__(turns)
        self.block_s = block_s

    async def request(self, turn: int) -> object:
        if turn == 0:
            time.sleep(self.block_s)
        return await super().request(turn)


async def test_a_blocked_loop_counts_against_the_first_turns_it_delays() -> None:
    sessions = [Blocking(1, 0.2), Instant(1)]
    run = await h.run_load(h.LoadShape("fixed", 2), sessions)
    delayed = next(r for r in run.records if r.session == 1)
    assert delayed.due_s == 0.0  # every first turn of a fixed load is due at the start
    assert delayed.held_s >= 0.19
    assert delayed.ttft_s == pytest.approx(delayed.held_s + 0.01, abs=1e-9)


class Raising(Instant):
    async def request(self, turn: int) -> object:
        raise RuntimeError("engine gone")


async def test_a_session_that_raises_is_a_failed_request() -> None:
    run = await h.run_load(h.LoadShape("fixed", 2), [Raising(3), Instant(2)])
    assert [(r.session, r.turn, r.error) for r in run.records if not r.ok] == [
        (0, 1, "RuntimeError: engine gone")
    ]
    assert h.summarize(run, {})["ok"] == 2


def test_the_summary_splits_first_turns_from_later_ones() -> None:
    records = [
        record(turn=1, ttft_s=2.0),
        record(turn=1, ttft_s=4.0),
        record(turn=2, ttft_s=0.5),
        record(turn=3, ttft_s=0.3),
        record(turn=3, ttft_s=9.0, error="x"),  # failed: not counted
    ]
    summary = h.summarize(h.LoadRun(h.LoadShape("fixed", 2), records, wall_s=1.0), {})
    assert summary["ttft_turn1_s"]["p50"] == pytest.approx(3.0)
    assert summary["ttft_later_s"]["p50"] == pytest.approx(0.4)
    assert summary["ttft_p50_by_turn_s"] == pytest.approx([3.0, 0.5, 0.3])
    assert (summary["output_tokens_min"], summary["output_tokens_max"]) == (3, 3)


def test_a_table_takes_its_columns_pairs_and_alignment() -> None:
    columns = (("who", "name", ""), ("ttft", "t", "msu"), ("p50/p95", "a/b", "f1"))
    rows = [{"name": "engine", "t": 0.4567, "a": 1.0, "b": None}]
    assert report.format_table(rows, columns, left=1).splitlines() == [
        "who      ttft  p50/p95",
        "------  -----  -------",
        "engine  457ms    1.0/-",
    ]
