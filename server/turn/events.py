"""What a turn yields: the events the responder relays as SSE or collects as JSON.

A single turn yields one `TurnMeta`, `TextDelta`s, then one `TurnDone`. A panel
yields one `TurnMeta` (with ``personas``), `PanelDelta`s interleaved as they come,
a `PanelReply` as each persona finishes, then one `PanelDone`.

ARCHITECTURE: one meta shape for both. Fields a turn kind does not have are None
and left out of the JSON (``omit_defaults``), so the wire format is what it was:
a turn's meta has ``persona`` and ``tier``, a panel's has ``personas``, in the same
key order as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from inference.types import TextDelta


class TurnMeta(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Who answers and what the message was understood as (the first event)."""

    route: str
    persona: str | None = None  # a single turn: the persona that answers
    personas: list[str] | None = None  # a panel: the ones that answer
    model: str
    emotion: str
    emotion_confidence: float
    content_label: str
    needs_verification: bool
    memories_used: list[int]
    # a single turn: "small" (short small talk answered by the small model) or "default"
    tier: str | None = None


class TurnDone(msgspec.Struct):
    user_message_id: int
    assistant_message_id: int
    usage: dict[str, int]
    timings: dict[str, float]
    finish_reason: str = "stop"  # "length": the reply was cut at the persona's max_tokens


@dataclass(frozen=True, slots=True)
class PanelDelta:
    """Text of one persona's answer in a panel."""

    persona: str
    text: str


class PanelReply(msgspec.Struct):
    """One persona's finished answer (stored as an assistant message)."""

    persona: str
    assistant_message_id: int
    usage: dict[str, int]
    timings: dict[str, float]


class PanelDone(msgspec.Struct):
    user_message_id: int
    replies: list[PanelReply]
    timings: dict[str, float]


TurnEvent = TurnMeta | TextDelta | TurnDone | PanelDelta | PanelReply | PanelDone
