"""The emotion classifier with the real trained head and the packaged MiniLM embedder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from inference.classifiers.dataset import EMOTION_LABELS, read_tsv, score
from inference.classifiers.emotion import EmotionClassifier
from inference.classifiers.head import ARTIFACT_DIR, EmotionHead
from inference.embedder import SentenceEmbedder

DEV = Path(__file__).resolve().parents[3] / "shared" / "data" / "goemotions-ekman" / "dev.tsv"

# Unambiguous messages, phrased so that no rule fires: the head must get them.
HEAD_CASES = {
    "anger": "You lied to me again and ruined everything, I am done with your crap",
    "disgust": "Someone spat their chewing tobacco all over the seat, absolutely vile",
    "fear": "This is so scary, I think someone is following me home.",
    "joy": "We won the championship tonight, best feeling in the world!",
    "neutral": "The meeting has been moved to Thursday at 10.",
    "sadness": "My grandmother passed away this morning and I can't stop crying.",
    "surprise": "Wait, what? You got married and never told anyone?!",
}


@pytest.fixture(scope="module")
def classifier() -> Iterator[EmotionClassifier]:
    embedder = SentenceEmbedder()
    yield EmotionClassifier(embedder)
    embedder.close()


def test_artifact_loads_with_seven_labels() -> None:
    head = EmotionHead.load(ARTIFACT_DIR)
    assert head.net.classifier.out_features == len(EMOTION_LABELS) == head.bias.shape[0]


@pytest.mark.parametrize(("label", "text"), sorted(HEAD_CASES.items()))
async def test_clear_messages_get_their_label(
    classifier: EmotionClassifier, label: str, text: str
) -> None:
    result = await classifier.classify(text)
    assert result.label == label, result
    assert 0.0 <= result.confidence <= 1.0
    assert set(result.scores) == set(EMOTION_LABELS)


def test_each_result_names_its_layer(classifier: EmotionClassifier) -> None:
    results = classifier.classify_batch(["I'm so happy!", "The bus leaves at nine."])
    assert [r.layer for r in results] == ["rules", "head"]
    assert results[0].label == "joy" and results[1].label == "neutral"
    assert all(0.0 <= r.confidence <= 1.0 for r in results)


class _FixedTransformer:
    """A stand-in larger model: records what it was asked, always answers surprise."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, texts: Sequence[str]) -> list[Mapping[str, float]]:
        self.asked.extend(texts)
        return [{"surprise": 0.8, "neutral": 0.2} for _ in texts]


async def test_only_unsure_results_reach_the_transformer(classifier: EmotionClassifier) -> None:
    transformer = _FixedTransformer()
    layered = EmotionClassifier(
        classifier.embedder, classifier.head, transformer, escalate_below=1.01
    )
    confident = await layered.classify("I'm terrified")  # rules decide: never escalated
    unsure = await layered.classify("hmm ok")
    assert confident.layer == "rules" and confident.label == "fear"
    assert unsure.layer == "transformer" and unsure.label == "surprise"
    assert transformer.asked == ["hmm ok"]


@pytest.mark.skipif(not DEV.exists(), reason="shared GoEmotions data not present")
def test_eval_on_a_dev_slice_runs(classifier: EmotionClassifier) -> None:
    rows = read_tsv(DEV)[:200]
    results = classifier.classify_batch([row.text for row in rows])
    scores = score([r.labels for r in rows], [EMOTION_LABELS.index(x.label) for x in results])
    assert set(scores.per_class) == set(EMOTION_LABELS)
    assert scores.accuracy > 0.4  # far above the 1/7 of chance; the full number is in docs/
