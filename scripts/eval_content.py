"""Evaluate the content classifier (rules + prototypes) on JSONL files of labelled messages.

    .venv/bin/python scripts/eval_content.py --data tests/data/content.jsonl \
        --data tests/data/content_adversarial.jsonl --data tests/data/everyday.jsonl \
        --json artifacts/content-eval.json

One ``{"text", "label"}`` object per line; a label the classifier does not
know is an error (exit status 2, naming the line). Each file is reported on
its own: per-label precision and recall, how many rows each layer decided,
and latency (ms per message for layers 1-3 after the embedding, mean and
p95, and with the embedding, one message per call). The LLM judge is not
used here.

Routing false alarms: every row labelled ``safe`` is routed as the first
message of a fresh, unverified session with `server.routing.decide_route`
(the service's own decision, with the minor flag a declared age would set);
a safe row that lands anywhere but the plain normal route (the adult age
prompt, a refusal, the crisis route or the hard block) is a false alarm.

``--json``: one file gives ``{"per_label", "ms", "routing"}``; several give
``{"files": {path: that object}}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from inference.classifiers.content import ContentClassifier, ContentResult
from inference.classifiers.content_rules import CONTENT_LABELS
from inference.embedder import SentenceEmbedder
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
    for layer in ("rules", "prototypes", "context"):
        picked = [(r, x) for r, x in zip(rows, results, strict=True) if x.layer == layer]
        if picked:
            right = sum(r.label == x.label for r, x in picked)
            print(f"  {layer:<11} {len(picked):4d} rows  accuracy {right / len(picked):.3f}")
    print(f"  unsure (would ask the judge): {sum(x.unsure for x in results)}")


def report_routing(rows: list[Row], alarms: list[tuple[Row, ContentResult, RouteDecision]]) -> None:
    safe = sum(row.label == "safe" for row in rows)
    rate = len(alarms) / safe if safe else 0.0
    print(f"routing false alarms: {len(alarms)} of {safe} safe rows ({rate:.3f})")
    for row, result, decision in alarms:
        where = "age prompt" if decision.needs_verification else decision.route
        print(f"  {where:<10} {result.label} {result.confidence:.2f}  {row.text}")


def evaluate(classifier: ContentClassifier, path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Classify, print and summarise one file."""
    rows = read_rows(path)[: args.limit]
    if not rows:
        raise DataError(f"{path} has no rows")
    texts = [row.text for row in rows]
    results = classifier.classify_batch(texts)
    table = per_label([r.label for r in rows], [x.label for x in results])
    print(f"\n{path}  rows {len(rows)}")
    report(rows, results, table)
    alarms = routing_false_alarms(rows, results)
    report_routing(rows, alarms)
    if args.errors:
        for row, result in zip(rows, results, strict=True):
            if row.label != result.label:
                print(f"  {row.label:>14} -> {result.label:<14} {result.layer:<10} {row.text}")
    timings = latency(classifier, texts[: args.timed]) if args.timed else {}
    print(" ".join(f"{name} {value:.2f} ms" for name, value in timings.items()))
    return {
        "per_label": {
            label: {"precision": v["precision"], "recall": v["recall"]}
            for label, v in table.items()
        },
        "ms": timings,
        "routing": {
            "safe_rows": sum(row.label == "safe" for row in rows),
            "false_alarms": len(alarms),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, action="append")
    parser.add_argument("--json", type=Path, help="write the summary (module docstring) here")
    parser.add_argument("--limit", type=int, help="only the first N rows of each file")
    parser.add_argument("--timed", type=int, default=100, help="messages timed one by one")
    parser.add_argument("--errors", action="store_true", help="print the misclassified rows")
    args = parser.parse_args()
    try:
        for path in args.data:
            read_rows(path)  # fail on a bad file before loading the model
    except (DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    classifier = ContentClassifier(SentenceEmbedder())
    try:
        summaries = {str(path): evaluate(classifier, path, args) for path in args.data}
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
