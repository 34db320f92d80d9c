"""The learned query adapter (memory.relevance): off by default, and what it does when on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memory.relevance import QueryAdapter
from memory.retrieval import RetrievalConfig

DIMS = 384


def _unit(vector: np.ndarray) -> np.ndarray:
    unit: np.ndarray = (vector / np.linalg.norm(vector)).astype(np.float32)
    return unit


def _axis(n: int) -> np.ndarray:
    vector = np.zeros(DIMS, np.float32)
    vector[n] = 1.0
    return vector


def _rank_one(source: np.ndarray, target: np.ndarray, alpha: float) -> QueryAdapter:
    """An adapter that adds ``target`` in proportion to the query's ``source`` component."""
    return QueryAdapter(source[:, None].copy(), target[None, :].copy(), alpha)


def test_retrieval_uses_the_query_as_embedded_unless_an_adapter_is_given() -> None:
    # Cross-validated on the LoCoMo dev set the adapter did not win (docs/memory.md,
    # "Fourth round"), so the default ranking is the old one.
    assert RetrievalConfig().query_adapter is None


def test_an_adapter_at_alpha_zero_is_the_unit_query() -> None:
    rng = np.random.default_rng(0)
    query = rng.normal(size=DIMS).astype(np.float32) * 3.0
    down = rng.normal(size=(DIMS, 4)).astype(np.float32)
    adapter = QueryAdapter(down, down.T.copy(), alpha=0.0)
    assert np.allclose(adapter.apply(query), _unit(query), atol=1e-6)


def test_the_adapter_moves_a_question_towards_the_answers_it_was_trained_on() -> None:
    # "question" and "answer" are the direction a question's wording takes and the
    # one its evidence lies in; a memory worded like the question outranks the
    # evidence by plain cosine, and the adapter turns the order round.
    question, answer, topic = _axis(0), _axis(1), _axis(2)
    query = _unit(question + topic)
    echo = _unit(0.6 * question + topic)  # repeats the question's wording
    evidence = _unit(answer + topic)
    assert query @ echo > query @ evidence

    moved = _rank_one(question, answer, alpha=1.5).apply(query)

    assert moved @ evidence > moved @ echo
    assert np.linalg.norm(moved) == pytest.approx(1.0)


def test_weights_round_trip_through_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    adapter = QueryAdapter(
        rng.normal(size=(DIMS, 2)).astype(np.float32),
        rng.normal(size=(2, DIMS)).astype(np.float32),
        alpha=0.5,
    )
    adapter.save(tmp_path / "adapter.npz")
    loaded = QueryAdapter.load(tmp_path / "adapter.npz")
    query = rng.normal(size=DIMS).astype(np.float32)
    assert loaded.alpha == 0.5
    assert np.allclose(loaded.apply(query), adapter.apply(query))


def test_mismatched_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        QueryAdapter(np.zeros((DIMS, 2), np.float32), np.zeros((3, DIMS), np.float32), 1.0)
