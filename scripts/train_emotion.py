"""Train the emotion head (inference/classifiers/head.py) on GoEmotions-Ekman.

    .venv/bin/python scripts/train_emotion.py \
        --train ../shared/data/goemotions-ekman/train.tsv \
        --dev ../shared/data/goemotions-ekman/dev.tsv

Method: MLP on the MiniLM sentence embedding plus a hashed uni/bigram table,
trained jointly with a class-weighted soft-label cross-entropy (a row with
several gold labels spreads its target evenly over them, which suits the
"any gold label is right" scoring). The epoch is selected on dev macro-F1,
then a per-class logit bias is fitted on dev by coordinate ascent. Writes
models/artifacts/emotion/{head.npz,metadata.json}; metadata records the
sha256 of both data files, the hyper-parameters and the dev metrics.
Embeddings are cached under artifacts/emotion-embeddings/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from emotion_cache import ROOT, cached_embeddings

from inference.classifiers.dataset import (
    EMOTION_LABELS,
    LabelledText,
    file_sha256,
    read_tsv,
    score,
)
from inference.classifiers.head import ARTIFACT_DIR, METADATA_FILE, EmotionHead, ngram_buckets
from inference.embedder import SentenceEmbedder

DATA = ROOT.parent / "shared" / "data" / "goemotions-ekman"


@dataclass(frozen=True)
class Hyper:
    """Chosen by dev macro-F1 in a small sweep (docs/understanding.md)."""

    hidden: int = 512
    buckets: int = 1 << 16
    epochs: int = 10
    batch: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    input_dropout: float = 0.1
    dropout: float = 0.3
    class_weight_power: float = 0.5  # weight = (max freq / freq) ** power
    seed: int = 0


class Net(torch.nn.Module):
    """The head as trained; exported to numpy arrays afterwards."""

    def __init__(self, hyper: Hyper, dims: int) -> None:
        super().__init__()
        self.mlp = torch.nn.Sequential(
            torch.nn.Dropout(hyper.input_dropout),
            torch.nn.Linear(dims, hyper.hidden),
            torch.nn.GELU(approximate="tanh"),
            torch.nn.Dropout(hyper.dropout),
            torch.nn.Linear(hyper.hidden, len(EMOTION_LABELS)),
        )
        self.ngrams = torch.nn.EmbeddingBag(hyper.buckets, len(EMOTION_LABELS), mode="sum")
        torch.nn.init.zeros_(self.ngrams.weight)  # start as the pure embedding model

    def forward(self, x: torch.Tensor, bags: list[list[int]]) -> torch.Tensor:
        flat = torch.tensor([i for bag in bags for i in bag], dtype=torch.long)
        offsets = torch.tensor(np.cumsum([0] + [len(b) for b in bags[:-1]]), dtype=torch.long)
        return self.mlp(x) + self.ngrams(flat, offsets)

    def export(self, bias: np.ndarray) -> EmotionHead:
        first, second = self.mlp[1], self.mlp[4]
        assert isinstance(first, torch.nn.Linear) and isinstance(second, torch.nn.Linear)

        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy().astype(np.float32)

        return EmotionHead(
            w1=arr(first.weight.T),
            b1=arr(first.bias),
            w2=arr(second.weight.T),
            b2=arr(second.bias),
            ngrams=arr(self.ngrams.weight).astype(np.float16).astype(np.float32),
            bias=bias.astype(np.float32),
        )


def soft_targets(rows: list[LabelledText]) -> np.ndarray:
    targets = np.zeros((len(rows), len(EMOTION_LABELS)), dtype=np.float32)
    for i, row in enumerate(rows):
        for label in row.labels:
            targets[i, label] += 1.0 / len(row.labels)
    return targets


def train(
    hyper: Hyper,
    train_x: np.ndarray,
    train_rows: list[LabelledText],
    dev_x: np.ndarray,
    dev_rows: list[LabelledText],
) -> tuple[EmotionHead, int, float]:
    """Train for ``hyper.epochs``; return the head of the best dev epoch (no bias yet)."""
    torch.manual_seed(hyper.seed)
    targets = torch.tensor(soft_targets(train_rows))
    freq = targets.sum(0)
    weights = (freq.max() / freq) ** hyper.class_weight_power
    net = Net(hyper, train_x.shape[1])
    optimiser = torch.optim.AdamW(
        [
            {"params": net.mlp.parameters(), "weight_decay": hyper.weight_decay},
            {"params": net.ngrams.parameters(), "weight_decay": 0.0},
        ],
        lr=hyper.lr,
    )
    x = torch.tensor(train_x)
    bags = [ngram_buckets(row.text, hyper.buckets) for row in train_rows]
    zero = np.zeros(len(EMOTION_LABELS))
    best: tuple[float, int, EmotionHead] | None = None
    for epoch in range(hyper.epochs):
        run_epoch(net, optimiser, x, bags, targets, weights, hyper.batch)
        head = net.export(zero)
        f1 = score(gold(dev_rows), predict(head, dev_x, dev_rows)).macro_f1
        print(f"epoch {epoch + 1:2d}  dev macro-F1 {f1:.4f}", file=sys.stderr)
        if best is None or f1 > best[0]:
            best = (f1, epoch + 1, head)
    assert best is not None
    return best[2], best[1], best[0]


def run_epoch(
    net: Net,
    optimiser: torch.optim.Optimizer,
    x: torch.Tensor,
    bags: list[list[int]],
    targets: torch.Tensor,
    weights: torch.Tensor,
    batch: int,
) -> None:
    net.train()
    order = torch.randperm(len(x))
    for start in range(0, len(x), batch):
        index = order[start : start + batch]
        logits = net(x[index], [bags[i] for i in index.tolist()])
        loss = -(targets[index] * torch.log_softmax(logits, -1) * weights).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()


def gold(rows: list[LabelledText]) -> list[tuple[int, ...]]:
    return [row.labels for row in rows]


def predict(head: EmotionHead, x: np.ndarray, rows: list[LabelledText]) -> list[int]:
    return head.logits(x, [row.text for row in rows]).argmax(1).tolist()


def fit_bias(logits: np.ndarray, labels: list[tuple[int, ...]], rounds: int = 3) -> np.ndarray:
    """Per-class logit offsets maximising macro-F1 (coordinate ascent on a grid)."""
    bias = np.zeros(logits.shape[1])
    grid = np.linspace(-2.0, 2.0, 41)
    for _ in range(rounds):
        for c in range(logits.shape[1]):
            trials = []
            for value in grid:
                trial = bias.copy()
                trial[c] = value
                trials.append(score(labels, (logits + trial).argmax(1).tolist()).macro_f1)
            bias[c] = grid[int(np.argmax(trials))]
    return bias


def cross_fitted_f1(logits: np.ndarray, labels: list[tuple[int, ...]]) -> float:
    """Macro-F1 with each dev half's bias fitted on the other half: an honest estimate."""
    half = len(labels) // 2
    first, second = fit_bias(logits[:half], labels[:half]), fit_bias(logits[half:], labels[half:])
    predicted = np.concatenate(
        [(logits[:half] + second).argmax(1), (logits[half:] + first).argmax(1)]
    )
    return score(labels, predicted.tolist()).macro_f1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.tsv")
    parser.add_argument("--dev", type=Path, default=DATA / "dev.tsv")
    parser.add_argument("--out", type=Path, default=ARTIFACT_DIR)
    args = parser.parse_args()
    torch.set_num_threads(2)
    hyper = Hyper()
    embedder = SentenceEmbedder()
    train_rows, dev_rows = read_tsv(args.train), read_tsv(args.dev)
    train_x = cached_embeddings(args.train, train_rows, embedder)
    dev_x = cached_embeddings(args.dev, dev_rows, embedder)
    started = time.perf_counter()
    head, epoch, raw_f1 = train(hyper, train_x, train_rows, dev_x, dev_rows)
    logits = head.logits(dev_x, [row.text for row in dev_rows])
    bias = fit_bias(logits, gold(dev_rows))
    head = EmotionHead(head.w1, head.b1, head.w2, head.b2, head.ngrams, bias.astype(np.float32))
    final = score(gold(dev_rows), predict(head, dev_x, dev_rows))
    head.save(args.out)
    metadata = {
        "labels": list(EMOTION_LABELS),
        "embedding_model": "all-minilm-l6-v2",
        "data": {
            "train": {
                "file": args.train.name,
                "sha256": file_sha256(args.train),
                "rows": len(train_rows),
            },
            "dev": {"file": args.dev.name, "sha256": file_sha256(args.dev), "rows": len(dev_rows)},
        },
        "hyper_parameters": asdict(hyper) | {"selected_epoch": epoch},
        "calibration_bias": [round(float(b), 3) for b in bias],
        "dev_metrics": {
            "accuracy": final.accuracy,
            "macro_f1": final.macro_f1,
            "per_class": final.per_class,
            "macro_f1_before_bias": raw_f1,
            "macro_f1_bias_cross_fitted": cross_fitted_f1(logits - head.bias, gold(dev_rows)),
            "scope": "head only (no rules layer); scripts/eval_emotion.py scores the classifier",
        },
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    print(json.dumps(metadata["dev_metrics"], indent=2))


if __name__ == "__main__":
    main()
