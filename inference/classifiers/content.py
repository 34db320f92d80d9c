"""The content classifier: what kind of message this is, for routing; cheapest layer first.

1. ``rules``: `content_rules.match_content_rules`, phrases, stated ages and
   age signals without a number (school grades, child roles, parents and
   bedtimes); any of these with a sexual or romantic label, from the rules
   or the prototypes, gives ``minor_sexual``.
2. ``prototypes``: nearest labelled seeds (`content_seeds.SEEDS`) in MiniLM
   space; the mean cosine of a label's ``k`` nearest seeds is its score,
   softmax over labels gives a probability per label. Alone, an unsure
   prototype guess opens the adult age prompt or the crisis persona only
   when that route's labels hold most of the probability (small talk near
   a self-harm or fetish seed stays on the normal route), and a
   minor_sexual guess with no age signal needs to be sure and sexual. Chosen over a trained
   head: no training data beyond a few hundred hand-written examples exists,
   prototypes are inspectable and extended by adding a sentence, and they
   cost one [1 x 384] @ [384 x ~100] product after the embedding.
3. ``context``: the conversation so far (`ContentContext`): a user known to
   be under 18 turns sexual or romantic content into ``minor_sexual``; a
   borderline message inside a locked explicit or fetish conversation keeps
   that label; a borderline message right after self-harm stays self-harm.
4. ``judge``: an optional LLM (`Judge`), asked only when the rules and the
   prototypes disagree, or the result is unsure; never for what a rule or
   the age check marked ``minor_sexual`` or ``self_harm``. The service passes
   one when ``COMPANION_CONTENT_JUDGE`` names a model (off by default: the
   packaged 135M model judges worse than the prototypes, docs/understanding.md);
   without one, unsure results keep layers 1-3's answer.

Every `ContentResult` names the deciding layer, gives short reasons and the
age the message states, if any.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

import numpy as np

from inference.classifiers.content_age import MinorSignal, is_minor
from inference.classifiers.content_rules import (
    CONTENT_LABELS,
    SEXUAL_LABELS,
    RuleMatch,
    match_content_rules,
)
from inference.classifiers.content_seeds import SEEDS
from inference.embedder import SentenceEmbedder, Vectors
from inference.metrics import default_understanding_metrics

Layer = Literal["rules", "prototypes", "context", "judge"]

# Labels a rule decides even when the prototypes disagree: missing them costs too much.
CRITICAL_LABELS = frozenset({"minor_sexual", "self_harm", "violent_threat", "hate"})
EXPLICIT_ROUTES = frozenset({"explicit", "fetish"})
# Labels that move a first message off the normal route: the adult age prompt, the crisis persona.
ROUTE_OPENING = frozenset({"explicit", "fetish", "self_harm"})


@dataclass(frozen=True, slots=True)
class ContentResult(MinorSignal):
    """One message's label, confidence in [0, 1], deciding layer, reasons and stated age.

    ``unsure`` says the cheap layers disagreed or were not confident (what
    sends a message to the judge); ``scores`` are the prototype probabilities.
    ``declared_age`` is ``age`` when the writer sincerely claims it as their
    own (`content_age.declared_age`); ``minor_cue`` names an age signal
    without a number (`content_minor_cues.minor_cue`: a school grade, a child
    role, parents or a bedtime), which makes sexual content ``minor_sexual``
    as a stated minor age does; ``de_escalation`` says the message clearly
    reports a crisis easing (routing ends a crisis window on it).
    """

    label: str
    confidence: float
    layer: Layer
    reasons: tuple[str, ...]
    age: int | None
    unsure: bool
    scores: dict[str, float]
    declared_age: int | None = None
    de_escalation: bool = False
    minor_cue: str | None = None

    @property
    def declares_minor(self) -> bool:
        """The writer sincerely says they are under 18: flag the user as a minor, for good."""
        return is_minor(self.declared_age)


@dataclass(frozen=True, slots=True)
class ContentContext:
    """What the conversation so far says about the next message.

    ``route`` and ``route_lock_remaining`` come from the session;
    ``known_age`` is an age stated earlier (or from a date of birth) and
    ``minor`` the user's permanent minor flag. ``user_id`` is whose message it
    is: the judge's request runs under it, so the engine keeps that KV with the
    user's own (never shared, and dropped when the user is erased).
    """

    recent_labels: tuple[str, ...] = ()
    route: str | None = None
    route_lock_remaining: int = 0
    known_age: int | None = None
    minor: bool = False
    user_id: str | None = None

    @property
    def is_minor(self) -> bool:
        return self.minor or is_minor(self.known_age)


NO_CONTEXT = ContentContext()


class Judge(Protocol):
    """A slower, smarter opinion (an LLM prompt) for messages the cheap layers are unsure of.

    Returns a label from `CONTENT_LABELS` and a confidence in [0, 1]. Raises
    `JudgeError` when it cannot answer; the classifier then keeps the cheap
    layers' result and says so in the reasons.
    """

    async def judge(self, text: str, context: ContentContext) -> tuple[str, float]: ...


class JudgeError(Exception):
    """The judge could not give a usable answer (engine failure, malformed reply)."""


@dataclass(frozen=True, slots=True)
class PrototypeIndex:
    """Seed embeddings grouped by label; `probabilities` scores messages against them."""

    labels: tuple[str, ...]
    vectors: Vectors  # [seeds, 384], L2-normalised
    owners: np.ndarray  # [seeds], index into labels
    k: int = 2
    temperature: float = 0.04
    # Safe is everything else, and no seed list covers everything: a message far from
    # every seed is safe. Chosen by leave-one-out on the seeds (not on the eval set):
    # non-safe seeds mostly score >= 0.31 against their own label, safe seeds ~0.2.
    safe_floor: float = 0.3

    @classmethod
    def build(
        cls, embedder: SentenceEmbedder, seeds: dict[str, tuple[str, ...]] = SEEDS
    ) -> PrototypeIndex:
        """Embed every seed once (about a hundred sentences: a second on a CPU)."""
        labels = tuple(label for label in CONTENT_LABELS if seeds.get(label))
        texts = [text for label in labels for text in seeds[label]]
        owners = np.array([i for i, label in enumerate(labels) for _ in seeds[label]])
        return cls(labels, embedder.encode(texts), owners)

    def probabilities(self, vectors: Vectors) -> Vectors:
        """[n, labels]: softmax over each label's mean similarity to its k nearest seeds."""
        similarity = vectors @ self.vectors.T
        scores = np.stack([self._label_score(similarity, i) for i in range(len(self.labels))], 1)
        if "safe" in self.labels:
            safe = self.labels.index("safe")
            scores[:, safe] = np.maximum(scores[:, safe], self.safe_floor)
        shifted = (scores - scores.max(axis=1, keepdims=True)) / self.temperature
        exp = np.exp(shifted)
        return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)

    def _label_score(self, similarity: Vectors, label: int) -> Vectors:
        own = similarity[:, self.owners == label]
        k = min(self.k, own.shape[1])
        top = -np.partition(-own, k - 1, axis=1)[:, :k]
        return np.asarray(top.mean(axis=1), dtype=np.float32)


class ContentClassifier:
    """Classifies messages for routing; `classify` for the service, `classify_batch` for scripts."""

    def __init__(
        self,
        embedder: SentenceEmbedder,
        prototypes: PrototypeIndex | None = None,
        judge: Judge | None = None,
        unsure_below: float = 0.55,
        use_rules: bool = True,
    ) -> None:
        self.embedder = embedder
        self.prototypes = prototypes if prototypes is not None else PrototypeIndex.build(embedder)
        self.judge = judge
        self.unsure_below = unsure_below
        self.use_rules = use_rules

    async def classify(self, text: str, context: ContentContext = NO_CONTEXT) -> ContentResult:
        """Classify one message in its conversation, sharing the embedding call with others."""
        started = time.perf_counter()
        vectors = await self.embedder.embed([text])
        result = await self.sharpen(text, context, self.decide([text], vectors, [context])[0])
        classifier = default_understanding_metrics().classifier.labels("content", result.layer)
        classifier.observe(time.perf_counter() - started)
        return result

    async def sharpen(
        self, text: str, context: ContentContext, result: ContentResult
    ) -> ContentResult:
        """Layer 4 on layers 1-3's ``result``: the judge decides an unsure one, when
        there is a judge. Public so that an evaluation can time the judge alone."""
        if self.judge is None or not result.unsure:
            return result
        return await self._ask_judge(self.judge, text, context, result)

    def classify_batch(
        self, texts: Sequence[str], contexts: Sequence[ContentContext] | None = None
    ) -> list[ContentResult]:
        """Layers 1-3 for many texts on this thread (evaluation); the judge is not asked."""
        return self.decide(texts, self.embedder.encode(texts), contexts)

    def decide(
        self,
        texts: Sequence[str],
        vectors: Vectors,
        contexts: Sequence[ContentContext] | None = None,
    ) -> list[ContentResult]:
        """Layers 1-3 on precomputed embeddings (what the latency budget covers)."""
        contexts = contexts if contexts is not None else [NO_CONTEXT] * len(texts)
        if not texts:
            return []
        probabilities = self.prototypes.probabilities(vectors)
        return [
            apply_context(self._combine(text, row), context)
            for text, row, context in zip(texts, probabilities, contexts, strict=True)
        ]

    def _combine(self, text: str, row: Vectors) -> ContentResult:
        scores = {label: float(p) for label, p in zip(self.prototypes.labels, row, strict=True)}
        rule = match_content_rules(text) if self.use_rules else RuleMatch(None, 0.0, (), None)
        return combine_layers(rule, scores, self.unsure_below)

    async def _ask_judge(
        self, judge: Judge, text: str, context: ContentContext, result: ContentResult
    ) -> ContentResult:
        try:
            label, confidence = await judge.judge(text, context)
        except (TimeoutError, JudgeError) as exc:
            return replace(result, reasons=(*result.reasons, f"judge failed: {exc}"))
        if label not in CONTENT_LABELS:
            return replace(result, reasons=(*result.reasons, f"judge answered {label!r}"))
        judged = replace(
            result,
            label=label,
            confidence=min(max(confidence, 0.0), 1.0),
            layer="judge",
            reasons=(*result.reasons, f"judge: {label}"),
            unsure=False,
        )
        # The judge may sharpen a label, but what the message states (an age, a minor
        # cue) and what the conversation knows (a minor user, a locked route) still hold:
        # layers 1-3 already applied them to the answer it replaces.
        return apply_context(_minor_if_underage(judged, "judge"), context)


def combine_layers(rule: RuleMatch, scores: dict[str, float], unsure_below: float) -> ContentResult:
    """Layers 1 and 2: a rule decides, the prototypes fill in; disagreement marks it unsure."""
    age_known = rule.age is not None or rule.minor_cue is not None
    top = _prototype_top(scores, age_known, unsure_below)
    if rule.label is None:
        return _prototypes_decide(rule, scores, top, unsure_below)
    proto_reason = f"prototypes: {top} {scores[top]:.2f}"
    agree = top == rule.label or scores[top] < unsure_below
    # A critical rule is trusted even against confident prototypes; a mild one is not.
    unsure = not agree and rule.label not in CRITICAL_LABELS
    confidence = max(rule.confidence, scores.get(rule.label, 0.0)) if agree else rule.confidence
    reasons = (*rule.reasons, proto_reason) if agree else (*rule.reasons, proto_reason, "disagree")
    return ContentResult(
        rule.label,
        confidence,
        "rules",
        reasons,
        rule.age,
        unsure,
        scores,
        rule.declared_age,
        rule.de_escalation,
        rule.minor_cue,
    )


def _prototypes_decide(
    rule: RuleMatch, scores: dict[str, float], top: str, unsure_below: float
) -> ContentResult:
    """Layer 2 alone (no rule phrase matched); the minor rule still applies to its label."""
    reasons = (*rule.reasons, f"prototypes: {top} {scores[top]:.2f}")
    # minor_sexual from prototypes alone, with no age signal, is a guess for the judge.
    age_known = rule.age is not None or rule.minor_cue is not None
    guessed_minor = max(scores, key=scores.__getitem__) == "minor_sexual" and not age_known
    unsure = scores[top] < unsure_below or guessed_minor
    label = top
    if (
        unsure
        and top in ROUTE_OPENING
        and not rule.minor_signal
        and not _route_majority(scores, top)
    ):
        # An unsure nearest-seed guess opens the adult age prompt or the crisis persona
        # only when that route's labels hold most of the probability ("my back hurts"
        # lands near the self-harm seeds, a bedtime story near everything): otherwise
        # the message stays on the normal route, still unsure (the judge's to sharpen),
        # and after a self-harm message the context layer keeps it self-harm.
        label = max(("safe", "romantic"), key=scores.__getitem__)
        reasons = (*reasons, f"prototypes unsure: {top} does not open a route")
    result = ContentResult(
        label,
        scores[label],
        "prototypes",
        reasons,
        rule.age,
        unsure,
        scores,
        rule.declared_age,
        rule.de_escalation and label != "self_harm",
        rule.minor_cue,
    )
    return _minor_if_underage(result, "rules")


def _route_majority(scores: dict[str, float], label: str) -> bool:
    """Whether the labels sharing ``label``'s route hold more than half the probability."""
    group = EXPLICIT_ROUTES if label in EXPLICIT_ROUTES else frozenset({label})
    return sum(scores.get(name, 0.0) for name in group) > 0.5


def _prototype_top(scores: dict[str, float], age_known: bool, unsure_below: float) -> str:
    """The prototypes' label; with an age signal, minor_sexual is left to the minor rule.

    The minor_sexual seeds all state an age or a school grade, so any message
    stating one lands near them ("I'm 16 and want to talk about school"). When
    the rules read an age or a minor cue, the best other label says whether
    the message is sexual at all, and `_minor_if_underage` does the rest.
    """
    top = max(scores, key=scores.__getitem__)
    if top != "minor_sexual":
        return top
    other = max((label for label in scores if label != top), key=scores.__getitem__)
    if age_known:
        return other
    # No age signal the rules can read: the same seeds also sit near talk *about*
    # children and school (a parent, a teacher, a memory). Only a confident guess
    # with a sexual runner-up keeps the block; otherwise the runner-up decides (and
    # the result stays unsure).
    sure = scores[top] >= unsure_below
    return top if sure and other in SEXUAL_LABELS else other


def apply_context(result: ContentResult, context: ContentContext) -> ContentResult:
    """Layer 3: what the conversation so far changes about this message's label."""
    if result.label in SEXUAL_LABELS and context.is_minor:
        age = f"age {context.known_age}" if context.known_age is not None else "minor"
        return _relabel(result, "minor_sexual", f"context: user is a minor ({age})")
    if _borderline(result) and context.route in EXPLICIT_ROUTES and context.route_lock_remaining:
        return _relabel(result, context.route, f"context: borderline inside {context.route} lock")
    if (
        _borderline(result)
        and result.label == "safe"
        and context.recent_labels[-1:] == ("self_harm",)
    ):
        return _relabel(result, "self_harm", "context: follows a self-harm message")
    return result


def _borderline(result: ContentResult) -> bool:
    return result.label == "romantic" or (result.label == "safe" and result.unsure)


def _relabel(result: ContentResult, label: str, reason: str) -> ContentResult:
    confidence = max(result.confidence, 0.8)
    reasons = (*result.reasons, reason)
    return replace(result, label=label, confidence=confidence, layer="context", reasons=reasons)


def _minor_if_underage(result: ContentResult, layer: Layer) -> ContentResult:
    if not result.minor_signal or result.label not in SEXUAL_LABELS:
        return result
    signal = result.minor_cue if result.minor_cue is not None else f"a stated age of {result.age}"
    reason = f"{layer}: sexual or romantic content with {signal}"
    return replace(
        result,
        label="minor_sexual",
        confidence=max(result.confidence, 0.9),
        layer=layer,
        reasons=(*result.reasons, reason),
        unsure=False,
    )
