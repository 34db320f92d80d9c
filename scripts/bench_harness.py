"""The one load harness every HTTP benchmark in scripts/ runs on.

What a benchmark brings: a list of sessions (a user's conversation, say), each
a fixed number of dependent requests (turn 2 needs turn 1's reply). What the
harness does with them:

- **load shapes**: ``fixed:C`` keeps C sessions in flight (closed loop: a
  worker takes the next session when its current one has finished every turn);
  ``poisson:R`` sends requests at R per second on average, with exponential
  gaps drawn from a seeded generator (open loop: the schedule does not wait for
  the server). Request i of the schedule is the next turn of session i mod N,
  so a session's turns are N arrivals apart. A turn whose previous turn is
  still streaming when it is due is held until that finishes; its latency is
  still counted from when it was due (``held_s`` says by how much it waited),
  so a slow server cannot slow the schedule down and look better for it;
- **per request**, client side: TTFT (sent to first content), TPOT (mean time
  per output token after the first: (e2e - TTFT) / (tokens - 1)), every
  inter-token latency (the gaps between content chunks), e2e, prompt, cached
  and output tokens;
- **summary**: mean and p50/p90/p95/p99 of TTFT, TPOT, ITL (all gaps pooled)
  and e2e; request and output-token throughput; goodput: the requests per
  second that met every latency target (``--slo ttft=2 --slo tpot=0.2``) and
  the fraction that did (a failed request meets none);
- a progress bar, a side-by-side table, JSON, and a PNG of latency CDFs.

Nothing here knows HTTP or a model: ``scripts/bench_openai.py`` and
``scripts/bench_chat.py`` bring the requests.
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
from pathlib import Path
from typing import Any, Literal, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_lib import Progress, percentile, progress_bar

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

    @property
    def label(self) -> str:
        if self.kind == "fixed":
            ramp = f", ramp {self.ramp_s:g}s" if self.ramp_s else ""
            return f"fixed C={int(self.value)}{ramp}"
        return f"poisson {self.value:g}/s"


def parse_load(text: str, seed: int = 0) -> LoadShape:
    """``fixed:4`` or ``poisson:0.5`` (a bare number is a fixed concurrency)."""
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
        return LoadShape("fixed", int(number), seed)
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
    held_s: float  # waited past due for its own session's previous turn (poisson only)
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
        """Send turn ``turn`` (0-based) and stream it to the end; never raises."""
        ...


@dataclass
class LoadRun:
    shape: LoadShape
    records: list[RequestRecord]
    wall_s: float


async def run_load(shape: LoadShape, sessions: Sequence[Session], description: str = "") -> LoadRun:
    """Every turn of every session under ``shape``; a failed turn ends its session."""
    await asyncio.gather(*(s.prepare() for s in sessions))
    total = sum(s.turns for s in sessions)
    bar = progress_bar(total, description or shape.label)
    records: list[RequestRecord] = []
    began = time.perf_counter()
    try:
        if shape.kind == "fixed":
            await _run_fixed(int(shape.value), sessions, began, records, bar, shape.ramp_s)
        else:
            await _run_poisson(shape, sessions, began, records, bar)
    finally:
        bar.close()
    wall = time.perf_counter() - began
    records.sort(key=lambda r: (r.due_s, r.session, r.turn))
    return LoadRun(shape, records, wall)


async def _run_fixed(
    concurrency: int,
    sessions: Sequence[Session],
    began: float,
    records: list[RequestRecord],
    bar: Progress,
    ramp_s: float = 0.0,
) -> None:
    queue = list(enumerate(sessions))
    queue.reverse()
    workers = min(concurrency, len(sessions))

    async def worker(number: int) -> None:
        first = queue.pop()  # taken now: a quick early worker must not start it sooner
        await asyncio.sleep(ramp_s * number / workers)
        queue.append(first)
        while queue:
            index, session = queue.pop()
            for turn in range(session.turns):
                due = time.perf_counter() - began
                record = record_from(index, turn + 1, due, 0.0, await session.request(turn))
                records.append(record)
                bar.update()
                if not record.ok:
                    bar.update(session.turns - turn - 1)
                    break

    await asyncio.gather(*(worker(n) for n in range(workers)))


async def _run_poisson(
    shape: LoadShape,
    sessions: Sequence[Session],
    began: float,
    records: list[RequestRecord],
    bar: Progress,
) -> None:
    order = round_robin([s.turns for s in sessions])
    arrivals = poisson_arrivals(shape.value, len(order), shape.seed)
    previous: dict[int, asyncio.Task[bool]] = {}  # session -> its latest turn (True: ok)

    async def one(index: int, turn: int, due: float, before: asyncio.Task[bool] | None) -> bool:
        await asyncio.sleep(max(0.0, began + due - time.perf_counter()))
        if before is not None and not await before:
            bar.update()  # the session already failed: this turn is never sent
            return False
        held = max(0.0, time.perf_counter() - began - due)
        record = record_from(index, turn + 1, due, held, await sessions[index].request(turn))
        records.append(record)
        bar.update()
        return record.ok

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


def round_robin(turns: Sequence[int]) -> list[tuple[int, int]]:
    """(session, turn) in schedule order: every session's turn 0, then every turn 1, ..."""
    return [(s, t) for t in range(max(turns, default=0)) for s, n in enumerate(turns) if t < n]


# --- numbers


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
    values = {
        "ttft": record.ttft_s,
        "tpot": record.tpot_s,
        "itl": max(record.itl_s, default=None),
        "e2e": record.e2e_s,
    }
    return all(values[m] is None or values[m] <= limit for m, limit in slos.items())


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


def distribution(values: Iterable[float]) -> dict[str, float | None]:
    items = list(values)
    out: dict[str, float | None] = {"mean": sum(items) / len(items) if items else None}
    for q in QUANTILES:
        out[f"p{q}"] = percentile(items, q)
    return out


def summarize(run: LoadRun, slos: Mapping[str, float]) -> dict[str, Any]:
    ok = [r for r in run.records if r.ok]
    tokens = sum(r.output_tokens for r in ok)
    wall = run.wall_s
    summary: dict[str, Any] = {
        "load": run.shape.label,
        "shape": asdict(run.shape),
        "requests": len(run.records),
        "ok": len(ok),
        "errors": len(run.records) - len(ok),
        "wall_s": wall,
        "output_tokens": tokens,
        "request_throughput_req_s": len(ok) / wall if wall > 0 else None,
        "output_throughput_tok_s": tokens / wall if wall > 0 else None,
        "ttft_s": distribution(r.ttft_s for r in ok if r.ttft_s is not None),
        "tpot_s": distribution(r.tpot_s for r in ok if r.tpot_s is not None),
        "itl_s": distribution(gap for r in ok for gap in r.itl_s),
        "e2e_s": distribution(r.e2e_s for r in ok if r.e2e_s is not None),
        "held_s": distribution(r.held_s for r in run.records),
        "prompt_tokens_mean": _mean(r.prompt_tokens for r in ok),
        "cached_tokens_mean": _mean(r.cached_tokens for r in ok),
        "goodput": goodput(run.records, slos, wall),
        "first_errors": [r.error for r in run.records if not r.ok][:3],
    }
    return summary


def _mean(values: Iterable[int | None]) -> float | None:
    items = [v for v in values if v is not None]
    return sum(items) / len(items) if items else None


def records_json(run: LoadRun) -> list[dict[str, Any]]:
    return [asdict(r) for r in run.records]


# --- reporting

_TABLE: tuple[tuple[str, str, str], ...] = (
    # header, path into the summary ("a.b"), format: "ms", "f1", "i", "pct", "" (text)
    ("target", "target", ""),
    ("load", "load", ""),
    ("ok", "ok", "i"),
    ("err", "errors", "i"),
    ("req/s", "request_throughput_req_s", "f2"),
    ("tok/s", "output_throughput_tok_s", "f1"),
    ("ttft p50", "ttft_s.p50", "ms"),
    ("ttft p99", "ttft_s.p99", "ms"),
    ("tpot p50", "tpot_s.p50", "ms"),
    ("tpot p99", "tpot_s.p99", "ms"),
    ("itl p50", "itl_s.p50", "ms"),
    ("itl p99", "itl_s.p99", "ms"),
    ("e2e p50", "e2e_s.p50", "ms"),
    ("e2e p99", "e2e_s.p99", "ms"),
    ("cached", "cached_tokens_mean", "f0"),
    ("good/s", "goodput.goodput_req_s", "f2"),
    ("good%", "goodput.good_fraction", "pct"),
)


def _lookup(summary: Mapping[str, Any], path: str) -> Any:
    value: Any = summary
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value * 1000:.0f}" if value >= 0.1 else f"{value * 1000:.1f}"
    if kind.startswith("f"):
        return f"{value:.{int(kind[1:])}f}"
    if kind == "i":
        return str(int(value))
    if kind == "pct":
        return f"{value * 100:.0f}%"
    return str(value)


def format_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """One row per (target, load); latencies in milliseconds."""
    header = [h for h, _, _ in _TABLE]
    rows = [[_cell(_lookup(s, path), kind) for _, path, kind in _TABLE] for s in summaries]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        left = [c.ljust(w) for c, w in zip(cells[:2], widths[:2], strict=True)]
        right = [c.rjust(w) for c, w in zip(cells[2:], widths[2:], strict=True)]
        return "  ".join(left + right)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def markdown_table(summaries: Sequence[Mapping[str, Any]]) -> str:
    """The same table in Markdown, for docs/benchmarks.md."""
    header = [h for h, _, _ in _TABLE]
    rows = [[_cell(_lookup(s, path), kind) for _, path, kind in _TABLE] for s in summaries]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def overhead_lines(summaries: Sequence[Mapping[str, Any]], baseline: str) -> list[str]:
    """Per load: every other target's p50/p99 TTFT and TPOT minus the baseline's."""
    lines = []
    base = {s["load"]: s for s in summaries if s["target"] == baseline}
    for s in summaries:
        ref = base.get(s["load"])
        if ref is None or s["target"] == baseline:
            continue
        parts = []
        for metric in ("ttft_s", "tpot_s", "e2e_s"):
            for q in ("p50", "p99"):
                a, b = s[metric][q], ref[metric][q]
                if a is not None and b is not None:
                    parts.append(f"{metric[:-2]} {q} {(a - b) * 1000:+.1f} ms")
        lines.append(f"{s['target']} - {baseline}, {s['load']}: " + ", ".join(parts))
    return lines


def draw_cdfs(path: Path, runs: Sequence[tuple[str, LoadRun]], title: str) -> None:
    """Four panels (TTFT, TPOT, ITL, e2e), one empirical CDF per (target, load):
    colour = target, line style = load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    targets = list(dict.fromkeys(name for name, _ in runs))
    loads = list(dict.fromkeys(run.shape.label for _, run in runs))
    styles = ("-", "--", ":", "-.")
    for name, run in runs:
        ok = [r for r in run.records if r.ok]
        series = {
            "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
            "tpot": [r.tpot_s for r in ok if r.tpot_s is not None],
            "itl": [gap for r in ok for gap in r.itl_s],
            "e2e": [r.e2e_s for r in ok if r.e2e_s is not None],
        }
        colour = f"C{targets.index(name)}"
        style = styles[loads.index(run.shape.label) % len(styles)]
        for ax, metric in zip(axes, METRICS, strict=True):
            values = sorted(v * 1000 for v in series[metric])
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(values, ys, where="post", color=colour, linestyle=style,
                    label=f"{name}, {run.shape.label}")  # fmt: skip
    names = {"ttft": "time to first token", "tpot": "time per output token",
             "itl": "inter-token latency", "e2e": "end to end"}  # fmt: skip
    for ax, metric in zip(axes, METRICS, strict=True):
        share = "fraction of gaps" if metric == "itl" else "fraction of requests"
        ax.set(xlabel="ms (log scale)", ylabel=share, xscale="log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(names[metric])
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small", loc="lower right", framealpha=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
