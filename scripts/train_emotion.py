"""Train the emotion head (inference/classifiers/head.py) on GoEmotions-Ekman.

    nice -n 5 .venv/bin/python scripts/train_emotion.py \
        --train ../shared/data/goemotions-ekman/train.tsv \
        --dev ../shared/data/goemotions-ekman/dev.tsv

Method: MiniLM's layer-5 token states are computed once per data file and
cached (scripts/emotion_cache.py, artifacts/emotion-embeddings/, git-ignored);
a copy of MiniLM's layer 6, initialised from the packaged model, is then
fine-tuned on them together with a mean-pooled linear classifier and a
hashed uni/bigram table. Loss: class-weighted soft-label cross-entropy (a row
with several gold labels spreads its target evenly over them, which suits
the "any gold label is right" scoring). Lower learning rate for the
pretrained layer than for the new parts, linear warm-up and decay. Dev
macro-F1 is measured twice per epoch and the best checkpoint kept (weights
rounded to float16 first, as they are stored); then a per-class logit bias is
fitted on dev by coordinate ascent. Two CPU threads: 17.5 minutes for three
epochs on the shared 2-core development VM, plus about 11 minutes for the
layer-5 cache on the first run. Writes models/artifacts/emotion/{head.npz,metadata.json};
metadata records the sha256 of both data files, the hyper-parameters and the
dev metrics. Test data is never read here.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from emotion_cache import ROOT, cached_token_states

from inference.classifiers.dataset import (
    EMOTION_LABELS,
    LabelledText,
    file_sha256,
    read_tsv,
    score,
)
from inference.classifiers.head import (
    ARTIFACT_DIR,
    BRANCH_LAYER,
    METADATA_FILE,
    BranchLayer,
    EmotionHead,
    EmotionNet,
    bags,
)
from inference.embedder import SentenceEmbedder

DATA = ROOT.parent / "shared" / "data" / "goemotions-ekman"


@dataclass(frozen=True)
class Hyper:
    """Chosen on dev macro-F1 (docs/understanding.md)."""

    buckets: int = 1 << 16
    epochs: int = 3
    batch: int = 64
    layer_lr: float = 1e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    dropout: float = 0.1
    warmup: float = 0.06  # fraction of the steps
    class_weight_power: float = 0.5  # weight = (max freq / freq) ** power
    evals_per_epoch: int = 2
    seed: int = 0


class Split:
    """One data file's cached token states, texts and soft targets."""

    def __init__(self, rows: list[LabelledText], states: np.ndarray, offsets: np.ndarray) -> None:
        self.rows = rows
        self.texts = [row.text for row in rows]
        self.states = states
        self.offsets = offsets
        self.lengths = np.diff(offsets)
        self.targets = torch.tensor(soft_targets(rows))

    def batch(self, index: list[int], buckets: int) -> tuple[torch.Tensor, ...]:
        longest = int(self.lengths[index].max())
        x = torch.zeros(len(index), longest, self.states.shape[1])
        mask = torch.zeros(len(index), longest, dtype=torch.bool)
        for j, i in enumerate(index):
            start, end = self.offsets[i], self.offsets[i + 1]
            x[j, : end - start] = torch.from_numpy(self.states[start:end].astype(np.float32))
            mask[j, : end - start] = True
        return (x, mask, *bags([self.texts[i] for i in index], buckets))

    def length_batches(self, size: int, rng: np.random.Generator | None) -> list[list[int]]:
        """Batches of similar lengths (little padding); shuffled when ``rng`` is given."""
        if rng is None:
            order = np.argsort(self.lengths, kind="stable")
        else:  # sort within random chunks of 50 batches: similar lengths, varied batches
            order = rng.permutation(len(self.rows))
            chunk = size * 50
            order = np.concatenate(
                [
                    order[s : s + chunk][np.argsort(self.lengths[order[s : s + chunk]])]
                    for s in range(0, len(order), chunk)
                ]
            )
        batches = [order[s : s + size].tolist() for s in range(0, len(order), size)]
        if rng is not None:
            rng.shuffle(batches)
        return batches


def soft_targets(rows: list[LabelledText]) -> np.ndarray:
    targets = np.zeros((len(rows), len(EMOTION_LABELS)), dtype=np.float32)
    for i, row in enumerate(rows):
        for label in row.labels:
            targets[i, label] += 1.0 / len(row.labels)
    return targets


def gold(rows: list[LabelledText]) -> list[tuple[int, ...]]:
    return [row.labels for row in rows]


def dev_logits(net: EmotionNet, dev: Split, buckets: int) -> np.ndarray:
    """Logits of every dev row, with the weights rounded to float16 as stored."""
    rounded = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name, p in rounded.named_parameters():
            if p.ndim >= 2:
                p.copy_(p.half().float())
            del name
    out = np.zeros((len(dev.rows), len(EMOTION_LABELS)), dtype=np.float32)
    with torch.inference_mode():
        for index in dev.length_batches(256, None):
            out[index] = rounded(*dev.batch(index, buckets)).numpy()
    return out


def make_optimiser(net: EmotionNet, hyper: Hyper) -> torch.optim.Optimizer:
    decay = [p for n, p in net.layer.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in net.layer.named_parameters() if p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "lr": hyper.layer_lr, "weight_decay": hyper.weight_decay},
            {"params": no_decay, "lr": hyper.layer_lr, "weight_decay": 0.0},
            {"params": net.classifier.parameters(), "lr": hyper.head_lr, "weight_decay": 0.0},
            {"params": net.ngrams.parameters(), "lr": hyper.head_lr, "weight_decay": 0.0},
        ]
    )


def train(
    hyper: Hyper, start: BranchLayer, train_split: Split, dev: Split
) -> tuple[EmotionNet, float, float, list[dict[str, float]]]:
    """Fine-tune; return the best dev checkpoint, its epoch (fractional), F1 and the log."""
    torch.manual_seed(hyper.seed)
    rng = np.random.default_rng(hyper.seed)
    net = EmotionNet(hyper.buckets, hyper.dropout)
    net.layer.load_state_dict(start.state_dict())
    freq = train_split.targets.sum(0)
    weights = (freq.max() / freq) ** hyper.class_weight_power
    optimiser = make_optimiser(net, hyper)
    per_epoch = -(-len(train_split.rows) // hyper.batch)
    total = per_epoch * hyper.epochs
    warmup = max(1, int(total * hyper.warmup))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup)))
    )
    best: tuple[float, float, EmotionNet] | None = None
    log: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(hyper.epochs):
        batches = train_split.length_batches(hyper.batch, rng)
        evals = hyper.evals_per_epoch
        checkpoints = {len(batches) * (k + 1) // evals for k in range(evals)}
        net.train()
        for step, index in enumerate(batches, start=1):
            logits = net(*train_split.batch(index, hyper.buckets))
            log_p = torch.log_softmax(logits, -1)
            loss: torch.Tensor = -(train_split.targets[index] * log_p * weights).sum(-1).mean()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            if step in checkpoints:
                at = epoch + step / len(batches)
                f1 = score(gold(dev.rows), dev_logits(net, dev, hyper.buckets).argmax(1).tolist())
                log.append({"epoch": round(at, 2), "dev_macro_f1": f1.macro_f1})
                print(
                    f"epoch {at:4.2f}  dev macro-F1 {f1.macro_f1:.4f}"
                    f"  ({time.perf_counter() - started:.0f} s)",
                    file=sys.stderr,
                )
                if best is None or f1.macro_f1 > best[0]:
                    best = (f1.macro_f1, at, copy.deepcopy(net).eval())
                net.train()
    assert best is not None
    return best[2], best[1], best[0], log


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


def load_split(path: Path, embedder: SentenceEmbedder) -> Split:
    rows = read_tsv(path)
    states, offsets = cached_token_states(path, rows, embedder, BRANCH_LAYER)
    return Split(rows, states, offsets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=Path, default=DATA / "train.tsv")
    parser.add_argument("--dev", type=Path, default=DATA / "dev.tsv")
    parser.add_argument("--out", type=Path, default=ARTIFACT_DIR)
    parser.add_argument("--epochs", type=int, default=Hyper.epochs)
    args = parser.parse_args()
    torch.set_num_threads(2)
    hyper = Hyper(epochs=args.epochs)
    embedder = SentenceEmbedder()
    train_split, dev = load_split(args.train, embedder), load_split(args.dev, embedder)
    start = BranchLayer.from_bert(embedder._loaded()[0].auto_model.encoder.layer[BRANCH_LAYER])
    started = time.perf_counter()
    net, epoch, raw_f1, log = train(hyper, start, train_split, dev)
    logits = dev_logits(net, dev, hyper.buckets)
    bias = fit_bias(logits, gold(dev.rows))
    net.calibration.copy_(torch.tensor(bias, dtype=torch.float32))  # type: ignore[operator]
    head = EmotionHead(net)
    final = score(gold(dev.rows), (logits + bias).argmax(1).tolist())
    head.save(args.out)
    metadata = {
        "labels": list(EMOTION_LABELS),
        "embedding_model": "all-minilm-l6-v2",
        "branch_layer": BRANCH_LAYER,
        "data": {
            "train": {
                "file": args.train.name,
                "sha256": file_sha256(args.train),
                "rows": len(train_split.rows),
            },
            "dev": {"file": args.dev.name, "sha256": file_sha256(args.dev), "rows": len(dev.rows)},
        },
        "hyper_parameters": asdict(hyper) | {"selected_epoch": epoch},
        "calibration_bias": [round(float(b), 3) for b in bias],
        "dev_log": log,
        "dev_metrics": {
            "accuracy": final.accuracy,
            "macro_f1": final.macro_f1,
            "per_class": final.per_class,
            "macro_f1_before_bias": raw_f1,
            "macro_f1_bias_cross_fitted": cross_fitted_f1(logits, gold(dev.rows)),
            "scope": "head only (no rules layer); scripts/eval_emotion.py scores the classifier",
        },
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    (args.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    print(json.dumps(metadata["dev_metrics"], indent=2))


if __name__ == "__main__":
    main()
