"""Evaluate the emotion classifier (rules + head) on a GoEmotions-format TSV file.

    .venv/bin/python scripts/eval_emotion.py --data ../shared/data/goemotions-ekman/dev.tsv \
        --json artifacts/emotion-dev.json

Prints accuracy, macro-F1, per-class F1, how many rows each layer decided (and
how often it was right), and latency: ms per text for layers 1-2 on
precomputed layer-5 token states, and with the MiniLM pass (timed on the first
``--timed`` texts, one at a time, as the service sees messages;
scripts/bench_emotion_latency.py measures latency properly). Multi-label
rows: a prediction is correct when it is any gold label (see
inference/classifiers/dataset.py for the per-class convention).
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
from emotion_cache import cached_token_states

from inference.classifiers.dataset import EMOTION_LABELS, LabelledText, read_tsv, score
from inference.classifiers.emotion import EmotionClassifier, EmotionResult
from inference.classifiers.head import BRANCH_LAYER, Floats
from inference.embedder import SentenceEmbedder


def layer_table(rows: list[LabelledText], results: list[EmotionResult]) -> list[str]:
    lines = []
    for layer in ("rules", "head", "transformer"):
        picked = [(r, x) for r, x in zip(rows, results, strict=True) if x.layer == layer]
        if picked:
            right = sum(EMOTION_LABELS.index(x.label) in r.labels for r, x in picked)
            # The head's own arg-max on the same rows: does the layer beat it there?
            head = sum(EMOTION_LABELS.index(_top(x)) in r.labels for r, x in picked)
            lines.append(
                f"  {layer:<12} {len(picked):6d} rows  accuracy {right / len(picked):.3f}"
                f"  (head alone on them {head / len(picked):.3f})"
            )
    return lines


def _top(result: EmotionResult) -> str:
    return max(result.scores, key=result.scores.__getitem__)


def time_per_text(classifier: EmotionClassifier, texts: list[str]) -> tuple[float, float]:
    """(ms per text after the MiniLM pass, ms per text with it), one text per call."""
    _, states = classifier.embedder.encode_with_states(texts, BRANCH_LAYER)
    start = time.perf_counter()
    for text, tokens in zip(texts, states, strict=True):
        classifier.decide([text], [tokens])
    after = (time.perf_counter() - start) * 1000 / len(texts)
    start = time.perf_counter()
    for text in texts:
        classifier.classify_batch([text])
    return after, (time.perf_counter() - start) * 1000 / len(texts)


def token_states(
    path: Path, rows: list[LabelledText], embedder: SentenceEmbedder, cache: bool
) -> list[Floats]:
    """Each row's layer-5 token states (cached on disk for whole files)."""
    if not cache:
        return embedder.encode_with_states([row.text for row in rows], BRANCH_LAYER)[1]
    flat, offsets = cached_token_states(path, rows, embedder, BRANCH_LAYER)
    return [np.asarray(flat[a:b], dtype=np.float32) for a, b in pairwise(offsets)]


def batched_decide(
    classifier: EmotionClassifier, texts: list[str], states: list[Floats], size: int = 256
) -> list[EmotionResult]:
    """`decide` in batches of similar lengths (little padding), results in input order."""
    order = sorted(range(len(texts)), key=lambda i: len(states[i]))
    results: list[EmotionResult | None] = [None] * len(texts)
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        decided = classifier.decide([texts[i] for i in rows], [states[i] for i in rows])
        for i, result in zip(rows, decided, strict=True):
            results[i] = result
    return [r for r in results if r is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("--timed", type=int, default=200, help="texts timed one by one")
    parser.add_argument("--no-rules", action="store_true", help="head only")
    args = parser.parse_args()
    rows = read_tsv(args.data)[: args.limit]
    embedder = SentenceEmbedder()
    classifier = EmotionClassifier(embedder, use_rules=not args.no_rules)
    texts = [row.text for row in rows]
    states = token_states(args.data, rows, embedder, args.limit is None)
    results = classifier.escalate(texts, batched_decide(classifier, texts, states))
    scores = score([r.labels for r in rows], [EMOTION_LABELS.index(x.label) for x in results])
    after, full = time_per_text(classifier, texts[: args.timed])
    print(f"{args.data}  rows {len(rows)}")
    print(f"accuracy {scores.accuracy:.4f}  macro-F1 {scores.macro_f1:.4f}")
    for label, f1 in scores.per_class.items():
        print(f"  {label:<10} F1 {f1:.4f}")
    print("\n".join(layer_table(rows, results)))
    print(f"ms per text: {after:.3f} after the embedding, {full:.2f} with it")
    if args.json:
        report = {
            "accuracy": scores.accuracy,
            "macro_f1": scores.macro_f1,
            "per_class": scores.per_class,
            "ms_per_text": {"after_embedding": after, "with_embedding": full},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
