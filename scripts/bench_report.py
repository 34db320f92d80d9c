"""How every benchmark in scripts/ reports: tables, JSON with the machine, plots.

The summaries come from scripts/bench_harness.py's ``summarize`` (or a script's
renaming of it); a table is a list of columns, each a header, a path into a
summary and a format, so scripts that show different columns still share one
way of drawing them.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import METRICS, LoadRun

# (header, path into the summary, format). A path is dotted ("ttft_s.p50"); "a/b"
# shows two values as "a/b". Formats: "ms" (seconds as milliseconds, one decimal
# below 100), "msu" (whole milliseconds with the unit), "f0".."f3" (decimals),
# "i" (integer), "pct", "" (as it is).
Column = tuple[str, str, str]

SERVING_COLUMNS: tuple[Column, ...] = (
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
    if kind == "msu":
        return f"{value * 1000:.0f}ms"
    if kind.startswith("f"):
        return f"{value:.{int(kind[1:])}f}"
    if kind == "i":
        return str(int(value))
    if kind == "pct":
        return f"{value * 100:.0f}%"
    return str(value)


def _cells(summary: Mapping[str, Any], columns: Sequence[Column]) -> list[str]:
    return [
        "/".join(_cell(_lookup(summary, p), kind) for p in path.split("/"))
        for _, path, kind in columns
    ]


def format_table(
    summaries: Sequence[Mapping[str, Any]],
    columns: Sequence[Column] = SERVING_COLUMNS,
    left: int = 2,
) -> str:
    """One row per summary: the first ``left`` columns left-aligned (names), the rest
    right-aligned (numbers), two spaces apart, under a rule."""
    header = [h for h, _, _ in columns]
    rows = [_cells(s, columns) for s in summaries]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded)

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def markdown_table(
    summaries: Sequence[Mapping[str, Any]], columns: Sequence[Column] = SERVING_COLUMNS
) -> str:
    """The same table in Markdown, for docs/benchmarks.md."""
    header = [h for h, _, _ in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cells(s, columns)) + " |" for s in summaries]
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


# --- JSON


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
    }


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


# --- plots


def _pyplot() -> Any:
    """matplotlib's pyplot on a file backend (imported only when a plot is asked for)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, title: str, dpi: int) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    _pyplot().close(fig)


_LINE_STYLES = ("-", "--", ":", "-.")
_METRIC_NAMES = {
    "ttft": "time to first token",
    "tpot": "time per output token",
    "itl": "inter-token latency",
    "e2e": "end to end",
}


def draw_cdfs(path: Path, runs: Sequence[tuple[str, LoadRun]], title: str) -> None:
    """Four panels (TTFT, TPOT, ITL, e2e), one empirical CDF per (target, load):
    colour = target, line style = load."""
    from matplotlib.ticker import NullFormatter

    fig, axes = _pyplot().subplots(1, 4, figsize=(18, 4.6))
    targets = list(dict.fromkeys(name for name, _ in runs))
    loads = list(dict.fromkeys(run.shape.label for _, run in runs))
    for name, run in runs:
        colour = f"C{targets.index(name)}"
        style = _LINE_STYLES[loads.index(run.shape.label) % len(_LINE_STYLES)]
        series = _series(run)
        for ax, metric in zip(axes, METRICS, strict=True):
            values = sorted(v * 1000 for v in series[metric])
            if values:
                ys = [(i + 1) / len(values) for i in range(len(values))]
                ax.step(values, ys, where="post", color=colour, linestyle=style,
                        label=f"{name}, {run.shape.label}")  # fmt: skip
    for ax, metric in zip(axes, METRICS, strict=True):
        share = "fraction of gaps" if metric == "itl" else "fraction of requests"
        ax.set(xlabel="ms (log scale)", ylabel=share, xscale="log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(_METRIC_NAMES[metric])
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize="x-small", loc="lower right", framealpha=0.8)
    _save(fig, path, title, dpi=110)


def _series(run: LoadRun) -> dict[str, list[float]]:
    ok = [r for r in run.records if r.ok]
    return {
        "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
        "tpot": [r.tpot_s for r in ok if r.tpot_s is not None],
        "itl": [gap for r in ok for gap in r.itl_s],
        "e2e": [r.e2e_s for r in ok if r.e2e_s is not None],
    }


def draw_sweep(path: Path, summaries: Sequence[Mapping[str, Any]], title: str) -> None:
    """Left: throughput against concurrency per backend. Right: TTFT p50 by turn
    (log scale; one colour per backend, one line style per concurrency). Reads
    bench_engine.py's summaries (``backend``, ``concurrency``, ``throughput_tok_s``,
    ``ttft_p50_by_turn_s``)."""
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(12, 4.8))
    levels = sorted({int(s["concurrency"]) for s in summaries}, reverse=True)
    backends = list(dict.fromkeys(s["backend"] for s in summaries))
    for colour, backend in enumerate(backends):
        runs = sorted((s for s in summaries if s["backend"] == backend), key=_by_concurrency)
        _plot_throughput(left, backend, runs, f"C{colour}")
        for run in runs:  # largest concurrency solid
            style = _LINE_STYLES[levels.index(run["concurrency"]) % len(_LINE_STYLES)]
            _plot_ttft(right, backend, run, f"C{colour}", style)
    left.set(xlabel="concurrent conversations", ylabel="generated tokens/s (all)")
    left.set_title("Aggregate throughput")
    left.set_xticks(levels)
    left.set_ylim(bottom=0)
    right.set(xlabel="turn", ylabel="TTFT p50 (ms, log scale)", yscale="log")
    right.set_title("Time to first token by turn")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", loc="best", framealpha=0.8)
    _save(fig, path, title, dpi=120)


def _by_concurrency(summary: Mapping[str, Any]) -> int:
    return int(summary["concurrency"])


def _plot_throughput(ax: Any, backend: str, runs: Sequence[Mapping[str, Any]], colour: str) -> None:
    xs = [s["concurrency"] for s in runs]
    ys = [s["throughput_tok_s"] or 0.0 for s in runs]
    ax.plot(xs, ys, marker="o", color=colour, label=backend)


def _plot_ttft(ax: Any, backend: str, run: Mapping[str, Any], colour: str, style: str) -> None:
    by_turn = run["ttft_p50_by_turn_s"]
    xs = [t + 1 for t, v in enumerate(by_turn) if v is not None]
    ys = [v * 1000 for v in by_turn if v is not None]
    label = f"{backend} C={run['concurrency']}"
    ax.plot(xs, ys, marker="o", markersize=4, color=colour, linestyle=style, label=label)
