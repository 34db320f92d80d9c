"""The LoCoMo benchmark's ceiling (scripts/bench_memory.py `best_cover`): no database."""

from __future__ import annotations

import pytest
from script_modules import load_script

bench = load_script("bench_memory")


def test_the_ceiling_takes_the_memories_that_cover_most_evidence_not_the_first() -> None:
    evidence = {1, 2, 3, 4}
    # Ranked order: two memories without evidence, then three that cover it all.
    sources = [{10, 11}, {12}, {1, 2}, {3}, {2, 4}]
    assert bench.best_cover(sources, evidence, 3) == pytest.approx(1.0)
    assert bench.best_cover(sources, evidence, 2) == pytest.approx(0.75)
    assert bench.best_cover(sources, evidence, 1) == pytest.approx(0.5)
    assert bench.best_cover(sources[:3], evidence, 10) == pytest.approx(0.5)
    assert bench.best_cover([], evidence, 10) == 0.0
