"""Evaluate the content classifier (rules + prototypes) on JSONL files of labelled messages.

    .venv/bin/python scripts/eval_content.py --data tests/data/content.jsonl \
        --data tests/data/content_adversarial.jsonl --data tests/data/everyday.jsonl \
        --json artifacts/content-eval.json

One ``{"text", "label"}`` object per line; a label the classifier does not
know is an error (exit status 2, naming the line). Each file is reported on
its own: per-label precision and recall, how many rows each layer decided,
and latency (ms per message for layers 1-3 after the embedding, mean and
p95, and with the embedding, one message per call).

``--judge``: layer 4 too, as the service runs it with
``COMPANION_CONTENT_JUDGE`` on: `content_judge.EngineJudge` on a llama.cpp
engine (in its own process, as the service starts it) with the packaged
SmolLM2-135M-Instruct, or the GGUF given with ``--judge-model``; greedy,
``--judge-deadline`` seconds. Every unsure row goes to the judge, one call
at a time, and each file then gets two tables: the labels of layers 1-3
alone (judge off) and with the judge's answers (judge on), plus how many
rows went to the judge, what it answered ("(failed)": past the deadline or
malformed), how many of those rows were right without it and how many its
answers fixed or broke, the routing false alarms without it, and the
latency of one judge call (p50/p95, with the load average: the judge's
engine runs niced, as in the service, so other work on the machine slows
it). The messages are judged without conversation context, as the first
message of a conversation is.

Routing false alarms: every row labelled ``safe`` is routed as the first
message of a fresh, unverified session with `server.routing.decide_route`
(the service's own decision, with the minor flag a declared age would set);
a safe row that lands anywhere but the plain normal route (the adult age
prompt, a refusal, the crisis route or the hard block) is a false alarm.

``--json``: one file gives ``{"per_label", "ms", "routing"}`` (with
``--judge`` also ``"judge"``: ``per_label_off``, ``false_alarms_off`` and
the counts and latency above); several give ``{"files": {path: that object}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from inference.classifiers.content import NO_CONTEXT, ContentClassifier, ContentResult
from inference.classifiers.content_judge import EngineJudge
from inference.classifiers.content_rules import CONTENT_LABELS
from inference.config import ChatEngineConfig
from inference.embedder import SentenceEmbedder
from inference.factory import create_engine
from server.routing import RouteDecision, decide_route


class Row(msgspec.Struct, frozen=True):
    text: str
    label: str


class DataError(Exception):
    """The data file is malformed or uses a label the classifier does not know."""


@dataclass(frozen=True, slots=True)
class FirstMessage:
    """The routing fields of a session nobody has written to yet (`RoutingSession`)."""

    age_verified: bool = False
    route: str | None = None
    route_lock_remaining: int = 0
    explicit_attempts: int = 0
    crisis_remaining: int = 0


@dataclass
class Judged:
    """What layer 4 did to one file: the results before it, and each call's seconds."""

    before: list[ContentResult]
    seconds: list[float] = field(default_factory=list)


def read_rows(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = msgspec.json.decode(line, type=Row)
        except msgspec.DecodeError as exc:
            raise DataError(f"{path}:{number}: {exc}") from exc
        if row.label not in CONTENT_LABELS:
            known = ", ".join(CONTENT_LABELS)
            raise DataError(f"{path}:{number}: unknown label {row.label!r} (known: {known})")
        rows.append(row)
    return rows


def per_label(gold: list[str], predicted: list[str]) -> dict[str, dict[str, float]]:
    """One-vs-rest precision and recall for every label (0.0 when undefined)."""
    table = {}
    for label in CONTENT_LABELS:
        tp = sum(g == p == label for g, p in zip(gold, predicted, strict=True))
        predicted_n = predicted.count(label)
        gold_n = gold.count(label)
        table[label] = {
            "precision": tp / predicted_n if predicted_n else 0.0,
            "recall": tp / gold_n if gold_n else 0.0,
            "support": float(gold_n),
        }
    return table


def first_message_route(result: ContentResult) -> RouteDecision:
    """How the service routes ``result`` as the first message of a fresh session."""
    return decide_route(FirstMessage(), result, minor=result.declares_minor)


def false_alarm(decision: RouteDecision) -> bool:
    """A safe message must get the plain normal route: no age prompt, refusal, crisis or block."""
    return decision.route != "normal" or decision.needs_verification or decision.refused


def routing_false_alarms(
    rows: list[Row], results: list[ContentResult]
) -> list[tuple[Row, ContentResult, RouteDecision]]:
    """The safe rows that a fresh session would route anywhere but plain normal."""
    alarms = []
    for row, result in zip(rows, results, strict=True):
        decision = first_message_route(result)
        if row.label == "safe" and false_alarm(decision):
            alarms.append((row, result, decision))
    return alarms


def latency(classifier: ContentClassifier, texts: list[str]) -> dict[str, float]:
    """ms per message, one at a time: layers 1-3 after the embedding, and with it."""
    vectors = classifier.embedder.encode(texts)
    after = []
    for i, text in enumerate(texts):
        start = time.perf_counter()
        classifier.decide([text], vectors[i : i + 1])
        after.append((time.perf_counter() - start) * 1000)
    full = []
    for text in texts:
        start = time.perf_counter()
        classifier.classify_batch([text])
        full.append((time.perf_counter() - start) * 1000)
    return {
        "after_embedding_mean": float(np.mean(after)),
        "after_embedding_p95": float(np.percentile(after, 95)),
        "with_embedding_mean": float(np.mean(full)),
        "with_embedding_p95": float(np.percentile(full, 95)),
    }


async def judge_unsure(
    classifier: ContentClassifier, rows: list[Row], results: list[ContentResult]
) -> tuple[list[ContentResult], Judged]:
    """Layer 4 on every unsure result, one call at a time (as one turn asks it)."""
    judged = Judged(results)
    after = []
    for row, result in zip(rows, results, strict=True):
        if not result.unsure:
            after.append(result)
            continue
        start = time.perf_counter()
        after.append(await classifier.sharpen(row.text, NO_CONTEXT, result))
        judged.seconds.append(time.perf_counter() - start)
    return after, judged


def judge_summary(rows: list[Row], after: list[ContentResult], judged: Judged) -> dict[str, Any]:
    """Rows sent to the judge, what its answers did to them, and its latency."""
    sent = [(r, b, a) for r, b, a in zip(rows, judged.before, after, strict=True) if b.unsure]
    ms = [s * 1000 for s in judged.seconds]
    return {
        "per_label_off": _precision_recall(
            per_label([r.label for r in rows], [b.label for b in judged.before])
        ),
        "false_alarms_off": len(routing_false_alarms(rows, judged.before)),
        "rows": len(sent),
        "answers": dict(Counter(_judge_answer(a) for _, _, a in sent).most_common()),
        "right_off": sum(b.label == r.label for r, b, _ in sent),
        "fixed": sum(b.label != r.label == a.label for r, b, a in sent),
        "broke": sum(b.label == r.label != a.label for r, b, a in sent),
        "ms_p50": float(np.percentile(ms, 50)) if ms else None,
        "ms_p95": float(np.percentile(ms, 95)) if ms else None,
        "loadavg": os.getloadavg(),  # the judge's latency depends on what else runs
    }


def _judge_answer(result: ContentResult) -> str:
    """What the judge said (its reason), which the minor rule or the context may overrule."""
    said = [r.removeprefix("judge: ") for r in result.reasons if r.startswith("judge: ")]
    return said[-1] if said else "(failed)"


def report_judge(summary: dict[str, Any], rows: int) -> None:
    latency = f"{summary['ms_p50']:.0f}/{summary['ms_p95']:.0f} ms" if summary["ms_p50"] else "n/a"
    answers = ", ".join(f"{label} {n}" for label, n in summary["answers"].items())
    print(
        f"judge: {summary['rows']} of {rows} rows sent, answers: {answers};"
        f" {summary['right_off']} were right without it; fixed"
        f" {summary['fixed']}, broke {summary['broke']}; p50/p95 per call {latency}"
        f" (load average {summary['loadavg'][0]:.2f}); routing false alarms without it:"
        f" {summary['false_alarms_off']}"
    )


def report(
    rows: list[Row], results: list[ContentResult], table: dict[str, dict[str, float]]
) -> None:
    print(f"{'label':<16}{'precision':>10}{'recall':>8}{'support':>9}")
    for label, values in table.items():
        print(
            f"{label:<16}{values['precision']:10.3f}{values['recall']:8.3f}"
            f"{int(values['support']):9d}"
        )
    accuracy = sum(r.label == x.label for r, x in zip(rows, results, strict=True)) / len(rows)
    print(f"accuracy {accuracy:.3f}")
    for layer in ("rules", "prototypes", "context", "judge"):
        picked = [(r, x) for r, x in zip(rows, results, strict=True) if x.layer == layer]
        if picked:
            right = sum(r.label == x.label for r, x in picked)
            print(f"  {layer:<11} {len(picked):4d} rows  accuracy {right / len(picked):.3f}")
    print(f"  unsure (left for the judge): {sum(x.unsure for x in results)}")


def report_routing(rows: list[Row], alarms: list[tuple[Row, ContentResult, RouteDecision]]) -> None:
    safe = sum(row.label == "safe" for row in rows)
    rate = len(alarms) / safe if safe else 0.0
    print(f"routing false alarms: {len(alarms)} of {safe} safe rows ({rate:.3f})")
    for row, result, decision in alarms:
        where = "age prompt" if decision.needs_verification else decision.route
        print(f"  {where:<10} {result.label} {result.confidence:.2f}  {row.text}")


async def evaluate(
    classifier: ContentClassifier, path: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Classify, print and summarise one file."""
    rows = read_rows(path)[: args.limit]
    if not rows:
        raise DataError(f"{path} has no rows")
    texts = [row.text for row in rows]
    results = classifier.classify_batch(texts)
    print(f"\n{path}  rows {len(rows)}")
    judged = None
    if classifier.judge is not None:
        print("judge off:")
        report(rows, results, per_label([r.label for r in rows], [x.label for x in results]))
        results, judged = await judge_unsure(classifier, rows, results)
        print("judge on:")
    table = per_label([r.label for r in rows], [x.label for x in results])
    report(rows, results, table)
    summary = judge_summary(rows, results, judged) if judged is not None else None
    if summary is not None:
        report_judge(summary, len(rows))
    alarms = routing_false_alarms(rows, results)
    report_routing(rows, alarms)
    if args.errors:
        for row, result in zip(rows, results, strict=True):
            if row.label != result.label:
                print(f"  {row.label:>14} -> {result.label:<14} {result.layer:<10} {row.text}")
    timings = latency(classifier, texts[: args.timed]) if args.timed else {}
    print(" ".join(f"{name} {value:.2f} ms" for name, value in timings.items()))
    out: dict[str, Any] = {
        "per_label": _precision_recall(table),
        "ms": timings,
        "routing": {
            "safe_rows": sum(row.label == "safe" for row in rows),
            "false_alarms": len(alarms),
        },
    }
    return out | ({"judge": summary} if summary is not None else {})


def _precision_recall(table: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        label: {"precision": v["precision"], "recall": v["recall"]} for label, v in table.items()
    }


@asynccontextmanager
async def judge_engine(args: argparse.Namespace) -> AsyncIterator[EngineJudge | None]:
    """The judge on a started llama.cpp engine when ``--judge`` asks for one; else None."""
    if not args.judge:
        yield None
        return
    model_id = args.judge_model.stem if args.judge_model else "smollm2-135m-instruct"
    config = ChatEngineConfig(model_path=args.judge_model, model_id=model_id)
    engine = create_engine(config)
    assert engine is not None  # backend "llamacpp" always makes one
    await engine.start()
    try:
        yield EngineJudge(engine, deadline_s=args.judge_deadline)
    finally:
        await engine.close()


async def evaluate_all(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    async with judge_engine(args) as judge:
        classifier = ContentClassifier(SentenceEmbedder(), judge=judge)
        return {str(path): await evaluate(classifier, path, args) for path in args.data}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, action="append")
    parser.add_argument("--json", type=Path, help="write the summary (module docstring) here")
    parser.add_argument("--limit", type=int, help="only the first N rows of each file")
    parser.add_argument("--timed", type=int, default=100, help="messages timed one by one")
    parser.add_argument("--errors", action="store_true", help="print the misclassified rows")
    parser.add_argument("--judge", action="store_true", help="layer 4 on too (module doc)")
    parser.add_argument("--judge-model", type=Path, help="the judge's GGUF (default: packaged)")
    parser.add_argument("--judge-deadline", type=float, default=5.0, help="seconds per call")
    args = parser.parse_args()
    try:
        for path in args.data:
            read_rows(path)  # fail on a bad file before loading the model
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summaries = asyncio.run(evaluate_all(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = next(iter(summaries.values())) if len(summaries) == 1 else {"files": summaries}
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
