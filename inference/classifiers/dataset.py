"""Labelled emotion data in the GoEmotions-Ekman TSV format, and how it is scored.

One row per line: ``text<TAB>comma-separated label indices<TAB>comment id``;
indices point into `EMOTION_LABELS`. Some rows carry several labels.

Scoring convention for multi-label rows (used by the training script's model
selection and by scripts/eval_emotion.py alike): the classifier predicts one
label, and a prediction is correct when it is *any* of the row's gold labels.
Per-class F1 is one-vs-rest under the same convention: a row counts as gold
class c when c is among its labels; a hit on such a row is a true positive for
the predicted class, and a miss is a false negative for the row's first gold
label (the annotators' first-listed label, so each row adds exactly one miss)
and a false positive for the predicted class. On single-label rows this is
plain single-label F1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

EMOTION_LABELS: tuple[str, ...] = (
    "anger",
    "disgust",
    "fear",
    "joy",
    "neutral",
    "sadness",
    "surprise",
)


@dataclass(frozen=True, slots=True)
class LabelledText:
    """One row: the text and the indices (into `EMOTION_LABELS`) of its gold labels."""

    text: str
    labels: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Scores:
    """Accuracy, macro-F1 and per-class F1 under the any-gold-label convention."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, float]


def read_tsv(path: Path) -> list[LabelledText]:
    """Rows of a GoEmotions-format TSV file (blank lines skipped)."""
    rows: list[LabelledText] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            rows.append(_parse_row(line.rstrip("\n"), path, number))
    return rows


def _parse_row(line: str, path: Path, number: int) -> LabelledText:
    fields = line.split("\t")
    if len(fields) < 2:
        raise ValueError(f"{path}:{number}: expected text<TAB>labels[<TAB>id]")
    labels = tuple(int(part) for part in fields[1].split(",") if part)
    if not labels or any(not 0 <= i < len(EMOTION_LABELS) for i in labels):
        raise ValueError(f"{path}:{number}: labels {fields[1]!r} out of range")
    return LabelledText(fields[0], labels)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: identifies the exact data a head was trained on."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def score(gold: Sequence[tuple[int, ...]], predicted: Sequence[int]) -> Scores:
    """Score single-label predictions against (possibly multi-label) gold rows."""
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted differ in length")
    n = len(EMOTION_LABELS)
    tp, fp, fn = [0] * n, [0] * n, [0] * n
    for labels, guess in zip(gold, predicted, strict=True):
        if guess in labels:
            tp[guess] += 1
        else:
            fp[guess] += 1
            fn[labels[0]] += 1
    per_class = {name: _f1(tp[i], fp[i], fn[i]) for i, name in enumerate(EMOTION_LABELS)}
    accuracy = sum(tp) / len(gold) if gold else 0.0
    return Scores(accuracy, sum(per_class.values()) / n, per_class)


def _f1(tp: int, fp: int, fn: int) -> float:
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0
