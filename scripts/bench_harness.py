"""The one load harness every benchmark in scripts/ runs on.

What a benchmark brings: a list of sessions (a user's conversation, say), each
a fixed number of dependent requests (turn 2 needs turn 1's reply), and a
client that streams one request into a `Sample` (scripts/bench_client.py has
them: OpenAI chat completions, the companion's SSE turn, an in-process engine).
What the harness does with them:

- **load shapes**: ``fixed:C`` keeps C sessions in flight (closed loop: a
  worker takes the next session when its current one has finished every turn);
  ``fixed:C,think=S`` has each user read and type for a while between a reply
  and their next message (uniform over 0..2S, S on average, seeded per session;
  not counted in any latency), so the users stop arriving together as a closed
  loop of identical replies makes them do, as people do;
  ``poisson:R`` sends requests at R per second on average, with exponential
  gaps drawn from a seeded generator (open loop: the schedule does not wait for
  the server). Request i of the schedule is the next turn of session i mod N,
  so a session's turns are N arrivals apart. A request's latency counts from
  when it was due, not from when it was sent: a Poisson turn whose previous
  turn is still streaming is held until that finishes, and the first turn of
  a fixed load is due when its worker is scheduled to start, so a client or
  engine that blocks the event loop shows it in the latencies (``held_s``
  says by how much a request waited) and a slow server cannot slow the
  schedule down and look better for it;
- **per request**, client side: TTFT (sent to first content), TPOT (mean time
  per output token after the first: (e2e - TTFT) / (tokens - 1)), every
  inter-token latency (the gaps between content chunks), e2e, prompt, cached
  and output tokens;
- **summary**: mean and p50/p90/p95/p99 of TTFT (also split into first and
  later turns, where a prefix cache shows), TPOT, ITL (all gaps pooled) and
  e2e; request and output-token throughput; goodput: the requests per second
  that met every latency target (``--slo ttft=2 --slo tpot=0.2``) and the
  fraction that did (a failed request meets none);
- a progress bar while it runs; tables, JSON and plots are scripts/bench_report.py's.

Nothing here knows HTTP or a model.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol

QUANTILES = (50, 90, 95, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")  # itl: the request's largest gap


# --- load shapes


@dataclass(frozen=True, slots=True)
class LoadShape:
    kind: Literal["fixed", "poisson"]
    value: float  # concurrency for fixed, requests/s for poisson
    seed: int = 0
    # fixed: the users start one after another over this many seconds instead of all in
    # the same instant (a load tester's ramp-up), so the run measures users arriving, not
    # a synchronized burst of first requests
    ramp_s: float = 0.0
    # fixed: the mean pause between a reply and the user's next message (see the module doc)
    think_s: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "fixed":
            ramp = f", ramp {self.ramp_s:g}s" if self.ramp_s else ""
            think = f", think {self.think_s:g}s" if self.think_s else ""
            return f"fixed C={int(self.value)}{ramp}{think}"
        return f"poisson {self.value:g}/s"


def parse_load(text: str, seed: int = 0) -> LoadShape:
    """``fixed:4``, ``fixed:4,think=2`` or ``poisson:0.5`` (a bare number is a fixed
    concurrency)."""
    text, _, options = text.partition(",")
    think = 0.0
    if options:
        name, _, seconds = options.partition("=")
        try:
            think = float(seconds) if name == "think" else math.nan
        except ValueError:
            think = math.nan
        if not 0 <= think < math.inf or text.startswith("poisson"):
            raise ValueError(f"load {text},{options}: the option is think=SECONDS (fixed only)")
    kind, _, value = text.partition(":")
    if not value:
        kind, value = "fixed", kind
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"load {text!r}: expected fixed:C or poisson:RATE") from None
    if kind == "fixed":
        if number < 1 or number != int(number):
            raise ValueError(f"load {text!r}: concurrency must be a positive integer")
        return LoadShape("fixed", int(number), seed, think_s=think)
    if kind == "poisson":
        if not number > 0 or math.isinf(number):
            raise ValueError(f"load {text!r}: rate must be a positive number")
        return LoadShape("poisson", number, seed)
    raise ValueError(f"load {text!r}: unknown shape {kind!r} (fixed or poisson)")


def poisson_arrivals(rate: float, count: int, seed: int) -> list[float]:
    """``count`` arrival offsets (seconds from the start) of a Poisson process of ``rate``/s.

    The first request goes at 0; the gaps are exponential with mean 1/rate. The
    same seed always gives the same schedule (its own generator, no global state).
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    generator = random.Random(seed)
    times, now = [], 0.0
    for i in range(count):
        if i:
            now += generator.expovariate(rate)
        times.append(now)
    return times


def round_robin(turns: Sequence[int]) -> list[tuple[int, int]]:
    """(session, turn) in schedule order: every session's turn 0, then every turn 1, ..."""
    return [(s, t) for t in range(max(turns, default=0)) for s, n in enumerate(turns) if t < n]


# --- what one request reports


@dataclass(slots=True)
class Sample:
    """One streamed request as its client saw it. Times are seconds since it was sent."""

    chunk_times: list[float] = field(default_factory=list)  # one per content chunk
    end_s: float = 0.0
    output_tokens: int | None = None  # from the server's usage; None: count chunks
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    text: str = ""
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def itls(chunk_times: Sequence[float]) -> list[float]:
    """Every gap between consecutive content chunks."""
    return [b - a for a, b in itertools.pairwise(chunk_times)]


def tpot(ttft_s: float | None, e2e_s: float | None, output_tokens: int) -> float | None:
    """Mean time per output token after the first; None for fewer than two tokens."""
    if ttft_s is None or e2e_s is None or output_tokens < 2:
        return None
    return (e2e_s - ttft_s) / (output_tokens - 1)


@dataclass(slots=True)
class RequestRecord:
    session: int
    turn: int  # 1-based
    due_s: float  # since the run began: when the load shape wanted it sent
    held_s: float  # sent this long after it was due (its session's previous turn, a busy loop)
    ttft_s: float | None
    tpot_s: float | None
    e2e_s: float | None
    itl_s: list[float]
    output_tokens: int
    prompt_tokens: int | None
    cached_tokens: int | None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def record_from(session: int, turn: int, due_s: float, held_s: float, s: Sample) -> RequestRecord:
    """A sample measured from its send, turned into latencies measured from when it was due."""
    tokens = s.output_tokens if s.output_tokens is not None else len(s.chunk_times)
    ttft = s.chunk_times[0] + held_s if s.chunk_times else None
    e2e = s.end_s + held_s if s.error is None else None
    return RequestRecord(
        session=session,
        turn=turn,
        due_s=due_s,
        held_s=held_s,
        ttft_s=ttft,
        tpot_s=tpot(ttft, e2e, tokens) if s.error is None else None,
        e2e_s=e2e,
        itl_s=itls(s.chunk_times),
        output_tokens=tokens,
        prompt_tokens=s.prompt_tokens,
        cached_tokens=s.cached_tokens,
        error=s.error,
        extra=s.extra,
    )


# --- running


class Session(Protocol):
    """A sequence of dependent requests (one user's conversation)."""

    turns: int

    async def prepare(self) -> None:
        """Untimed setup before the clock starts (sign up, open a conversation)."""
        ...

    async def request(self, turn: int) -> Sample:
        """Send turn ``turn`` (0-based) and stream it to the end. Failures are best
        returned in ``Sample.error``; one raised counts as a failed request."""
        ...


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


def progress_bar(total: int, description: str) -> Progress:
    """tqdm when it is installed, else a counter on stderr."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _Counter(total, description)
    bar: Progress = tqdm(total=total, desc=description, unit="turn", file=sys.stderr)
    return bar


class _Counter:
    def __init__(self, total: int, description: str) -> None:
        self.total, self.done, self.description = total, 0, description

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"\r{self.description}: {self.done}/{self.total} turns", end="", file=sys.stderr)

    def close(self) -> None:
        print(file=sys.stderr)


@dataclass
class LoadRun:
    shape: LoadShape
    records: list[RequestRecord]
    wall_s: float


@dataclass
class _Clock:
    """What the runners share: the start, the records so far, the progress bar."""

    began: float
    records: list[RequestRecord]
    bar: Progress

    def now(self) -> float:
        return time.perf_counter() - self.began

    async def send(
        self, index: int, session: Session, turn: int, due: float | None
    ) -> RequestRecord:
        """Send one turn that was due at ``due`` (None: now); record it whatever happens."""
        now = self.now()
        due = now if due is None else due
        held = max(0.0, now - due)
        try:
            sample = await session.request(turn)
        except Exception as exc:  # a failed turn ends its session; the rest go on
            sample = Sample(error=f"{type(exc).__name__}: {exc}")
            print(f"\nsession {index} turn {turn + 1} failed: {sample.error}", file=sys.stderr)
        record = record_from(index, turn + 1, due, held, sample)
        self.records.append(record)
        self.bar.update()
        return record


async def run_load(shape: LoadShape, sessions: Sequence[Session], description: str = "") -> LoadRun:
    """Every turn of every session under ``shape``; a failed turn ends its session."""
    await asyncio.gather(*(s.prepare() for s in sessions))
    bar = progress_bar(sum(s.turns for s in sessions), description or shape.label)
    clock = _Clock(time.perf_counter(), [], bar)  # started after the bar: it takes a while
    try:
        if shape.kind == "fixed":
            await _run_fixed(shape, sessions, clock)
        else:
            await _run_poisson(shape, sessions, clock)
    finally:
        clock.bar.close()
    wall = clock.now()
    records = sorted(clock.records, key=lambda r: (r.due_s, r.session, r.turn))
    return LoadRun(shape, records, wall)


async def _run_fixed(shape: LoadShape, sessions: Sequence[Session], clock: _Clock) -> None:
    queue = list(enumerate(sessions))
    queue.reverse()
    workers = min(int(shape.value), len(sessions))

    async def worker(number: int) -> None:
        first = queue.pop()  # taken now: a quick early worker must not start it sooner
        start = shape.ramp_s * number / workers
        await asyncio.sleep(max(0.0, start - clock.now()))
        await _converse(*first, clock, start, shape)
        while queue:
            await _converse(*queue.pop(), clock, None, shape)

    await asyncio.gather(*(worker(n) for n in range(workers)))


async def _converse(
    index: int, session: Session, clock: _Clock, start: float | None, shape: LoadShape
) -> None:
    """One session's turns, the user pausing between them (``think_s``); the first is
    due at ``start`` (None: now), each later one when its pause ends."""
    pauses = random.Random(shape.seed * 1_000_003 + index)
    for turn in range(session.turns):
        if turn and shape.think_s:
            await asyncio.sleep(pauses.uniform(0.0, 2 * shape.think_s))
        if not (await clock.send(index, session, turn, start if turn == 0 else None)).ok:
            clock.bar.update(session.turns - turn - 1)
            return


async def _run_poisson(shape: LoadShape, sessions: Sequence[Session], clock: _Clock) -> None:
    order = round_robin([s.turns for s in sessions])
    arrivals = poisson_arrivals(shape.value, len(order), shape.seed)
    previous: dict[int, asyncio.Task[bool]] = {}  # session -> its latest turn (True: ok)

    async def one(index: int, turn: int, due: float, before: asyncio.Task[bool] | None) -> bool:
        await asyncio.sleep(max(0.0, due - clock.now()))
        if before is not None and not await before:
            clock.bar.update()  # the session already failed: this turn is never sent
            return False
        return (await clock.send(index, sessions[index], turn, due)).ok

    for (index, turn), due in zip(order, arrivals, strict=True):
        task = asyncio.ensure_future(one(index, turn, due, previous.get(index)))
        previous[index] = task
    await asyncio.gather(*previous.values())


def merge_runs(runs: Sequence[LoadRun]) -> LoadRun:
    """Repeats of one load as one run: requests pooled, wall times added (so throughput is
    the mean over the repeats), sessions renumbered apart."""
    if not runs or any(r.shape != runs[0].shape for r in runs):
        raise ValueError("merge_runs needs one or more runs of the same load shape")
    records: list[RequestRecord] = []
    offset = 0
    for run in runs:
        records += [replace(r, session=r.session + offset) for r in run.records]
        offset += max((r.session for r in run.records), default=-1) + 1
    return LoadRun(runs[0].shape, records, sum(r.wall_s for r in runs))


# --- numbers


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are there; None when none are."""
    items = [v for v in values if v is not None]
    return sum(items) / len(items) if items else None


def distribution(values: Iterable[float | None]) -> dict[str, float | None]:
    """Mean and every quantile in ``QUANTILES`` of the values that are there."""
    items = [v for v in values if v is not None]
    out: dict[str, float | None] = {"mean": mean(items)}
    for q in QUANTILES:
        out[f"p{q}"] = percentile(items, q)
    return out


def parse_slos(items: Iterable[str]) -> dict[str, float]:
    """``["ttft=2.0", "tpot=0.2"]`` to ``{"ttft": 2.0, "tpot": 0.2}`` (seconds)."""
    slos: dict[str, float] = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name not in SLO_METRICS:
            raise ValueError(f"--slo {item!r}: metric must be one of {', '.join(SLO_METRICS)}")
        try:
            slos[name] = float(value)
        except ValueError:
            raise ValueError(f"--slo {item!r}: expected METRIC=SECONDS") from None
        if not slos[name] > 0:
            raise ValueError(f"--slo {item!r}: the target must be positive")
    return slos


def meets(record: RequestRecord, slos: Mapping[str, float]) -> bool:
    """Whether ``record`` succeeded and met every target. A metric a request has no value
    for (TPOT of a one-token reply, ITL without gaps) does not count against it."""
    if not record.ok:
        return False
    values: dict[str, float | None] = {
        "ttft": record.ttft_s,
        "tpot": record.tpot_s,
        "itl": max(record.itl_s, default=None),
        "e2e": record.e2e_s,
    }
    return all(_within(values[m], limit) for m, limit in slos.items())


def _within(value: float | None, limit: float) -> bool:
    return value is None or value <= limit


def goodput(
    records: Sequence[RequestRecord], slos: Mapping[str, float], wall_s: float
) -> dict[str, Any]:
    good = sum(1 for r in records if meets(r, slos))
    return {
        "slos_s": dict(slos),
        "good_requests": good,
        "good_fraction": good / len(records) if records else None,
        "goodput_req_s": good / wall_s if wall_s > 0 else None,
    }


def summarize(run: LoadRun, slos: Mapping[str, float]) -> dict[str, Any]:
    """The numbers of one run that every benchmark reports (its table and JSON pick)."""
    ok = [r for r in run.records if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    wall = run.wall_s
    return {
        "load": run.shape.label,
        "shape": asdict(run.shape),
        "requests": len(run.records),
        "ok": len(ok),
        "errors": len(run.records) - len(ok),
        "wall_s": wall,
        "output_tokens": tokens,
        "output_tokens_min": min((r.output_tokens for r in ok), default=None),
        "output_tokens_max": max((r.output_tokens for r in ok), default=None),
        "request_throughput_req_s": len(ok) / wall if wall > 0 else None,
        "output_throughput_tok_s": tokens / wall if wall > 0 else None,
        "ttft_s": distribution(r.ttft_s for r in ok),
        **_ttft_by_turn(ok),
        "tpot_s": distribution(r.tpot_s for r in ok),
        "itl_s": distribution(gap for r in ok for gap in r.itl_s),
        "itl_beside_prompt": beside_prompt(ok),
        "e2e_s": distribution(r.e2e_s for r in ok),
        "held_s": distribution(r.held_s for r in run.records),
        "prompt_tokens_mean": mean(r.prompt_tokens for r in ok),
        "cached_tokens_mean": mean(r.cached_tokens for r in ok),
        "goodput": goodput(run.records, slos, wall),
        "first_errors": [r.error for r in run.records if not r.ok][:3],
    }


def beside_prompt(ok: Sequence[RequestRecord]) -> float | None:
    """The share of inter-token gaps during which another request was waiting for its
    first token (its prompt computed or queued). A server whose closed-loop users fall
    into lockstep (every reply the same length, the next turns sent in the same instant)
    computes their prompts while no one streams, and its gaps never carry a prompt:
    near 0. One that starts each reply as soon as it can has its prompts ride along
    others' decoding: its slowest gaps are those. (Times: seconds since the run began;
    a request was sent at ``due + held`` and its first token came at ``due + ttft``.)"""
    waits = [
        (r.due_s + r.held_s, r.due_s + r.ttft_s, i)
        for i, r in enumerate(ok)
        if r.ttft_s is not None
    ]
    gaps = beside = 0
    for i, r in enumerate(ok):
        if r.ttft_s is None:
            continue
        at = r.due_s + r.ttft_s
        for gap in r.itl_s:
            gaps += 1
            beside += any(s < at + gap and e > at and j != i for s, e, j in waits)
            at += gap
    return beside / gaps if gaps else None


def _ttft_by_turn(ok: Sequence[RequestRecord]) -> dict[str, Any]:
    """TTFT of first turns (the whole prompt to compute) apart from later ones (the
    history a prefix cache may hold), and the median of each turn."""
    last = max((r.turn for r in ok), default=0)
    return {
        "ttft_turn1_s": distribution(r.ttft_s for r in ok if r.turn == 1),
        "ttft_later_s": distribution(r.ttft_s for r in ok if r.turn >= 2),
        "ttft_p50_by_turn_s": [
            distribution(r.ttft_s for r in ok if r.turn == t)["p50"] for t in range(1, last + 1)
        ],
    }


def records_json(run: LoadRun) -> list[dict[str, Any]]:
    return [asdict(r) for r in run.records]
