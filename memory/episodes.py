"""Episodic memories cut from a conversation: short windows of consecutive turns.

Why windows and not single turns: a single chat turn is often meaningless on
its own ("Yes, last Tuesday!"); the question that needs it names the topic the
turn before raised. A window of a few turns carries that context into both the
embedding and the text index, and it still records every turn it holds in
``source_message_ids``, so provenance stays exact. Windows never cross a
session (a gap in time), and they carry the session's date, because questions
about the past are so often questions about when.

Each episode after the first of a session also carries its ``context``: the
episode before it. The store folds that into the episode's embedding (not into
its text, so the prompt pays nothing for it): a window often continues a topic
the previous one named ("Wow, I'm excited too!" after "I entered a dance
competition"). Only the episode *before* is used, because that is all the
write path knows when a turn is stored; see `LongTermMemory.add`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from memory.ranking import estimate_tokens

# At most 128 estimated tokens per episode: two or three turns of ordinary chat
# (one exchange plus its lead-in), and ten of them fit a ~1200-token prompt block.
DEFAULT_EPISODE_TOKENS = 128


@dataclass(frozen=True, slots=True)
class Turn:
    """One stored chat message as an episode sees it."""

    message_id: int
    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class Episode:
    """What `LongTermMemory.add` needs for one episodic memory."""

    content: str
    source_message_ids: list[int]
    occurred_at: datetime | None
    context: str | None = None  # the previous episode of the same session


def cut_episodes(
    session: Sequence[Turn],
    occurred_at: datetime | None,
    max_tokens: int = DEFAULT_EPISODE_TOKENS,
) -> list[Episode]:
    """Consecutive, non-overlapping windows of one session, each within ``max_tokens``.

    Bounded by size rather than by turn count, so a memory costs the prompt a
    predictable amount whether the turns are terse or long; a single turn
    longer than the bound is an episode of its own. Non-overlapping so that
    every turn is in exactly one memory: overlapping windows would fill the
    top-k with near-duplicates of the same exchange.
    """
    episodes: list[Episode] = []
    window: list[Turn] = []
    for turn in session:
        if window and estimate_tokens(_episode([*window, turn], occurred_at).content) > max_tokens:
            episodes.append(_episode(window, occurred_at, _last(episodes)))
            window = []
        window.append(turn)
    if window:
        episodes.append(_episode(window, occurred_at, _last(episodes)))
    return episodes


def _last(episodes: Sequence[Episode]) -> str | None:
    return episodes[-1].content if episodes else None


def _episode(
    turns: Sequence[Turn], occurred_at: datetime | None, context: str | None = None
) -> Episode:
    lines = [f"{turn.speaker}: {turn.text}" for turn in turns]
    if occurred_at is not None:
        # "8 May 2023": the words people use in questions, for the text index too.
        lines.insert(0, f"[{occurred_at.day} {occurred_at:%B %Y}]")
    return Episode(
        content="\n".join(lines),
        source_message_ids=[turn.message_id for turn in turns],
        occurred_at=occurred_at,
        context=context,
    )
