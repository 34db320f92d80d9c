"""The ranking formula of long-term retrieval (memory.ranking), without a database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import numpy as np
import pytest

from memory.episodes import Turn, cut_episodes
from memory.ranking import (
    Candidate,
    RankingConfig,
    combine,
    feedback_query,
    rank,
    second_hop,
)


def test_a_clear_lead_in_one_list_beats_a_weak_match_in_both() -> None:
    # Memory 1 is far closer in meaning than anything else, but shares no word with
    # the query; memories 2..31 are middling in meaning and match only a common word
    # (text score 0.2 against the best 2.0, memory 40's). Rank fusion gave 2..31 the
    # win for being "in both lists"; the score combination keeps the margin.
    by_vector = [(1, 0.20)] + [(i, 0.60 + i / 1000) for i in range(2, 32)] + [(40, 0.75)]
    by_text = [(40, 2.0)] + [(i, 0.2) for i in range(2, 32)]

    relevance = combine(by_vector, by_text, vector_weight=0.5)

    assert max(relevance, key=relevance.__getitem__) == 1
    assert relevance[1] == pytest.approx(0.5)  # best vector, no text
    assert relevance[40] == pytest.approx(0.5)  # worst vector candidate, best text
    assert all(0.0 <= value <= 1.0 for value in relevance.values())


def test_one_sided_and_empty_lists() -> None:
    assert combine([], [], 0.5) == {}
    assert combine([(7, 0.3)], [], 0.5) == {7: pytest.approx(0.5)}  # a single candidate is the best
    assert combine([], [(3, 1.5), (4, 0.5)], 0.5) == {3: 0.5, 4: pytest.approx(0.5 / 3)}


def test_importance_and_recency_break_ties_in_relevance() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    then = datetime(2020, 1, 1, tzinfo=UTC)
    old = Candidate(id=1, importance=0.5, created_at=then, content="a")
    new = Candidate(id=2, importance=0.2, created_at=now, content="b")
    vital = Candidate(id=3, importance=1.0, created_at=then, content="c")
    ranked = rank({1: old, 2: new, 3: vital}, {1: 0.5, 2: 0.5, 3: 0.5}, now, RankingConfig())
    assert [c.id for c, _ in ranked] == [3, 2, 1]


def test_each_episode_after_the_first_carries_the_one_before_as_context() -> None:
    turns = [Turn(i, "Ann" if i % 2 else "Ben", "word " * 40) for i in range(6)]
    episodes = cut_episodes(turns, datetime(2023, 5, 8, tzinfo=UTC), max_tokens=128)

    assert len(episodes) > 2
    assert episodes[0].context is None
    for before, episode in itertools.pairwise(episodes):
        assert episode.context == before.content


def _unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_the_second_hop_finds_what_the_best_match_is_about() -> None:
    # A answers the query; B is about what A is about but shares little with the
    # query itself; C is a middling match to the query and unrelated to A.
    query = _unit(1, 0, 0)
    vectors = {1: _unit(0.8, 0.6, 0), 2: _unit(0.3, 0.95, 0), 3: _unit(0.5, 0, 0.87)}
    first = combine([(i, 1.0 - float(v @ query)) for i, v in vectors.items()], [], 0.5)
    assert first[3] > first[2]

    config = RankingConfig(feedback_top=1)
    ids = list(vectors)
    matrix = np.stack([vectors[i] for i in ids])
    second = second_hop(query, ids, matrix, first, [], config, limit=3)

    assert second[2] > second[3]
    assert max(second, key=second.__getitem__) == 1


def test_the_moved_query_is_a_unit_vector_and_none_moves_nothing() -> None:
    query = _unit(1, 2, 3)
    moved = feedback_query(query, [_unit(3, 2, 1), _unit(0, 1, 0)])
    assert np.linalg.norm(moved) == pytest.approx(1.0, abs=1e-6)
    assert feedback_query(query, []) is query


def test_the_second_hop_moves_towards_the_best_two_by_default() -> None:
    # 1 and 2 answer the query; 1 leans towards topic x. 3 is a weaker match
    # that leans towards topic z. 4 is about x, 5 about z; both are equally far
    # from the query, so the first hop ranks 5 (newer) first. Moving towards the
    # best two finds x; a third memory in the feedback would pull towards z.
    query = _unit(1, 0, 0, 0)
    vectors = {
        1: _unit(0.95, 0.3, 0, 0),
        2: _unit(0.95, 0, 0, 0.3),
        3: _unit(0.72, 0, 0.69, 0),
        4: _unit(0.3, 0.95, 0, 0),
        5: _unit(0.3, 0, 0.95, 0),
    }
    first = combine([(i, 1.0 - float(v @ query)) for i, v in vectors.items()], [], 0.5)
    assert first[4] == first[5]
    ids = list(vectors)
    matrix = np.stack([vectors[i] for i in ids])

    second = second_hop(query, ids, matrix, first, [], RankingConfig(), limit=5)
    three = second_hop(query, ids, matrix, first, [], RankingConfig(feedback_top=3), limit=5)

    assert second[4] > second[5]
    assert three[5] > three[4]  # what the default avoids
