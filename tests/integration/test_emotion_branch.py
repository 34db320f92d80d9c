"""The emotion head's branch off the embedding pass, on the packaged MiniLM.

The head reads MiniLM's layer-5 token states from the pass that also makes the
retrieval vector; these tests hold the two promises that rest on: the
retrieval vectors do not change, and the branch starts from the same layer 6.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from inference.classifiers.head import BRANCH_LAYER, BranchLayer, pad
from inference.embedder import SentenceEmbedder

TEXTS = [
    "ok",
    "I can't believe you did that to me, I'm furious",
    "The train was late again, so I walked home in the rain and thought about it.",
    "wow",
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceEmbedder]:
    model = SentenceEmbedder(threads=1)
    yield model
    model.close()


def test_vectors_are_unchanged_by_asking_for_states(embedder: SentenceEmbedder) -> None:
    assert embedder.active_runtime == "onnx"
    plain = embedder.encode(TEXTS)
    vectors, states = embedder.encode_with_states(TEXTS, BRANCH_LAYER)
    assert np.array_equal(plain, vectors)  # bit-identical: stored memories stay valid
    lengths = embedder.token_counts(TEXTS)
    assert [s.shape for s in states] == [(n, 384) for n in lengths]


def test_branch_initialised_from_layer_6_reproduces_the_model(embedder: SentenceEmbedder) -> None:
    model = embedder._loaded()
    transformer = model[0].auto_model.eval()
    _, states = embedder.encode_with_states(TEXTS, BRANCH_LAYER)
    branch = BranchLayer.from_bert(transformer.encoder.layer[BRANCH_LAYER]).eval()
    batch, mask = pad(states)
    features = model.tokenize(TEXTS)
    names = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode():
        mine = branch(batch, mask)
        theirs = transformer(**{n: features[n] for n in names}).last_hidden_state
    for i, tokens in enumerate(states):
        n = len(tokens)
        assert torch.allclose(mine[i, :n], theirs[i, :n], atol=1e-4)


async def test_service_path_shares_one_pass(embedder: SentenceEmbedder) -> None:
    text = "my cat knocked the plant over again"
    _, expected = embedder.encode_with_states([text], BRANCH_LAYER)
    states = await embedder.token_states(text, BRANCH_LAYER)
    assert np.array_equal(states, expected[0])
    # After the first call every pass keeps the states: a later text's come from its
    # embedding pass, and its vector is the one `encode` gives.
    other = "we are moving to Lisbon in May"
    vector = (await embedder.embed([other]))[0]
    assert other in embedder._recent_states
    assert np.array_equal(vector, embedder.encode([other])[0])
    assert np.array_equal(
        await embedder.token_states(other, BRANCH_LAYER), embedder._recent_states[other]
    )
