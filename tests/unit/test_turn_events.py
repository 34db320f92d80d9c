"""The turn's pieces that need no model and no database: one meta struct, whose JSON is
what each kind of turn always sent (the web UI and clients read these keys); the step
clock and its histogram; and the merge of a panel's generations."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from server.turn.events import TurnMeta
from server.turn.merge import merged
from server.turn.metrics import TurnMetrics
from server.turn.stats import TurnClock

UNDERSTOOD = {
    "route": "normal",
    "model": "tiny",
    "emotion": "joy",
    "emotion_confidence": 0.5,
    "content_label": "safe",
    "needs_verification": False,
    "memories_used": [3],
}


def test_a_single_turns_meta_has_persona_and_tier_in_place() -> None:
    meta = TurnMeta(persona="mentor", tier="default", **UNDERSTOOD)  # type: ignore[arg-type]
    keys = list(msgspec.json.decode(msgspec.json.encode(meta)))
    assert keys == [
        "route",
        "persona",
        "model",
        "emotion",
        "emotion_confidence",
        "content_label",
        "needs_verification",
        "memories_used",
        "tier",
    ]


def test_a_panels_meta_has_personas_and_no_persona_or_tier() -> None:
    meta = TurnMeta(personas=["companion", "mentor"], **UNDERSTOOD)  # type: ignore[arg-type]
    decoded = msgspec.json.decode(msgspec.json.encode(meta))
    assert list(decoded) == ["route", "personas", *list(UNDERSTOOD)[1:]]
    assert decoded["personas"] == ["companion", "mentor"]


def test_steps_reach_the_histogram_except_those_a_turn_kind_skips() -> None:
    registry = CollectorRegistry()
    clock = TurnClock(TurnMetrics(registry), skipped={"ttft"})
    clock.record("fit", 0.25)
    clock.mark("ttft")
    clock.mark("total")
    assert list(clock.report()) == ["fit_s", "total_s"]
    count = registry.get_sample_value
    assert count("companion:turn_step_seconds_sum", {"step": "fit"}) == 0.25
    assert count("companion:turn_step_seconds_count", {"step": "total"}) == 1
    assert count("companion:turn_step_seconds_count", {"step": "ttft"}) is None


async def _items(name: str, delays: list[float], fail: bool = False):  # type: ignore[no-untyped-def]
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield f"{name}{i}"
    if fail:
        raise RuntimeError(f"{name} failed")


async def test_merged_interleaves_as_items_come() -> None:
    streams = {"a": _items("a", [0.0, 0.1]), "b": _items("b", [0.05, 0.1])}
    got = [item async for item in merged(streams)]
    assert got == [("a", "a0"), ("b", "b0"), ("a", "a1"), ("b", "b1")]


async def test_merged_raises_the_first_error_and_stops_the_rest() -> None:
    streams = {"a": _items("a", [0.0], fail=True), "b": _items("b", [0.0, 10.0])}
    with pytest.raises(RuntimeError, match="a failed"):
        async with asyncio.timeout(2):
            [item async for item in merged(streams)]


async def test_one_stream_is_relayed_as_it_is() -> None:
    assert [item async for item in merged({"x": _items("x", [0.0, 0.0])})] == [
        ("x", "x0"),
        ("x", "x1"),
    ]
