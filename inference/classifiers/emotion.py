"""The emotion classifier: Ekman's six plus neutral, cheapest layer first.

1. ``rules``: `lexicon.match_rules`, only for unmistakable statements.
2. ``head``: `head.EmotionHead`, a fine-tuned copy of MiniLM's last layer run on
   the layer-5 token states of the embedding pass the service already makes
   (always computed for the scores, even when a rule decides, so every result
   carries all seven).
3. ``transformer``: an optional larger classifier (any `TransformerLayer`, e.g. a
   fine-tuned BERT loaded from a local path by the operator), consulted only
   for texts whose head confidence is below ``escalate_below``. Nothing is
   downloaded here.

Every `EmotionResult` says which layer decided and how confident it was.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from inference.classifiers.dataset import EMOTION_LABELS
from inference.classifiers.head import BRANCH_LAYER, EmotionHead, Floats
from inference.classifiers.lexicon import match_rules
from inference.embedder import SentenceEmbedder
from inference.metrics import default_understanding_metrics

Layer = Literal["rules", "head", "transformer"]


@dataclass(frozen=True, slots=True)
class EmotionResult:
    """One text's label, its confidence in [0, 1], the deciding layer and all label scores."""

    label: str
    confidence: float
    layer: Layer
    scores: dict[str, float]


class TransformerLayer(Protocol):
    """A larger classifier for the texts the cheaper layers are unsure of.

    Returns, per text, a probability per label (keys from `EMOTION_LABELS`;
    missing labels count as 0). Called off the event loop, so it may block.
    """

    def __call__(self, texts: Sequence[str]) -> list[Mapping[str, float]]: ...


class EmotionClassifier:
    """Classifies user messages; `classify` for the service, `classify_batch` for scripts."""

    def __init__(
        self,
        embedder: SentenceEmbedder,
        head: EmotionHead | None = None,
        transformer: TransformerLayer | None = None,
        escalate_below: float = 0.5,
        use_rules: bool = True,
    ) -> None:
        self.embedder = embedder
        self.head = head if head is not None else EmotionHead.load()
        self.transformer = transformer
        self.escalate_below = escalate_below
        self.use_rules = use_rules

    async def classify(self, text: str) -> EmotionResult:
        """Classify one message, sharing the embedding pass with concurrent callers."""
        started = time.perf_counter()
        states = await self.embedder.token_states(text, BRANCH_LAYER)
        result = self.decide([text], [states])[0]
        if self._should_escalate(result) and self.transformer is not None:
            loop = asyncio.get_running_loop()
            scores = await loop.run_in_executor(None, self.transformer, [text])
            result = _from_scores(scores[0], "transformer")
        classifier = default_understanding_metrics().classifier.labels("emotion", result.layer)
        classifier.observe(time.perf_counter() - started)
        return result

    def classify_batch(self, texts: Sequence[str]) -> list[EmotionResult]:
        """Classify many texts on this thread (evaluation, training scripts)."""
        _, states = self.embedder.encode_with_states(texts, BRANCH_LAYER)
        return self.escalate(texts, self.decide(texts, states))

    def decide(self, texts: Sequence[str], states: Sequence[Floats]) -> list[EmotionResult]:
        """Layers 1 and 2 on precomputed layer-5 token states, one array per text."""
        probabilities = self.head.probabilities(states, texts)
        return [self._decide_one(text, row) for text, row in zip(texts, probabilities, strict=True)]

    def escalate(self, texts: Sequence[str], results: list[EmotionResult]) -> list[EmotionResult]:
        """Layer 3 for the unsure results, when a transformer is configured."""
        unsure = [i for i, result in enumerate(results) if self._should_escalate(result)]
        if self.transformer is None or not unsure:
            return results
        answers = self.transformer([texts[i] for i in unsure])
        escalated = list(results)
        for i, scores in zip(unsure, answers, strict=True):
            escalated[i] = _from_scores(scores, "transformer")
        return escalated

    def _decide_one(self, text: str, probabilities: Floats) -> EmotionResult:
        scores = {label: float(p) for label, p in zip(EMOTION_LABELS, probabilities, strict=True)}
        hit = match_rules(text) if self.use_rules else None
        if hit is not None:
            # The rule's label wins; its confidence is the rule's, never below the head's own.
            confidence = max(hit.confidence, scores[hit.label])
            return EmotionResult(hit.label, confidence, "rules", scores)
        return _from_scores(scores, "head")

    def _should_escalate(self, result: EmotionResult) -> bool:
        return result.layer == "head" and result.confidence < self.escalate_below


def _from_scores(scores: Mapping[str, float], layer: Layer) -> EmotionResult:
    full = {label: float(scores.get(label, 0.0)) for label in EMOTION_LABELS}
    label = max(full, key=full.__getitem__)
    confidence = float(np.clip(full[label], 0.0, 1.0))
    return EmotionResult(label, confidence, layer, full)
