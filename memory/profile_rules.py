"""Cheap profile signals from one user message: Big Five cues, stated goals, goal progress.

Phrase patterns, first person, in the spirit of the content rules: they fire
on what people say about themselves ("I'm an introvert", "I can't stop
worrying", "I made a schedule"), not on topics. Each trait cue points at one
pole of a trait (``value`` 1.0 high, 0.0 low). One message is weak evidence
of a personality trait (even the best lexicon studies find small
correlations), so the caller gives rule signals a small weight and lets
them add up over many messages (`memory.profile`).

A negation in front ("I'm not anxious") does not match: the optional words
allowed between "I'm" and the cue never include "not".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Trait = Literal["openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism"]
TRAITS: tuple[Trait, ...] = (
    "openness",
    "conscientiousness",
    "extraversion",
    "agreeableness",
    "neuroticism",
)
GoalStatus = Literal["active", "achieved", "abandoned"]
GOAL_STATUSES: tuple[GoalStatus, ...] = ("active", "achieved", "abandoned")

_IM = r"\bi\s*(?:['\u2019]\s*m|m|\s+am)\s+"
_IM_OR_FEEL = r"\bi\s*(?:['\u2019]\s*m|m|\s+am|\s+feel|\s+get|\s+often\s+feel)\s+"
_INTENSITY = r"(?:so\s+|really\s+|very\s+|pretty\s+|always\s+|constantly\s+|quite\s+|such\s+)?"

# (trait, value, pattern): value 1.0 is the high pole of the trait, 0.0 the low one.
_CUES: tuple[tuple[Trait, float, str], ...] = (
    ("openness", 1.0, r"\b(?:love|enjoy|like)\s+(?:trying|learning|exploring)\s+new\b"),
    ("openness", 1.0, r"\bi(?:'m|\s+am)\s+(?:so\s+|really\s+)?curious\s+about\b|\bnew\s+ideas\b"),
    (
        "openness",
        1.0,
        r"\bi\s+(?:love|enjoy|adore)\s+(?:art|poetry|philosophy|museums|painting|jazz|"
        r"travell?ing|foreign\s+films|languages|science\s+fiction|writing\s+stories)\b",
    ),
    ("openness", 1.0, r"\b(?:try|trying)\s+something\s+(?:new|different)\b"),
    ("openness", 0.0, r"\bi\s+(?:prefer|like|need)\s+(?:my|a|the)\s+(?:routine|usual)\b"),
    ("openness", 0.0, r"\bi\s+(?:don'?t|do\s+not)\s+like\s+(?:change|trying\s+new)\b"),
    ("openness", 0.0, r"\bstick\s+(?:to|with)\s+what\s+i\s+know\b"),
    ("openness", 0.0, r"\b(?:art|poetry|philosophy)\s+is\s+(?:boring|pointless|useless)\b"),
    (
        "conscientiousness",
        1.0,
        r"\bi\s+(?:made|make|wrote|write|keep|have)\s+a\s+(?:plan|schedule|to-?do\s+list|"
        r"checklist|spreadsheet|budget)\b",
    ),
    ("conscientiousness", 1.0, _IM + _INTENSITY + r"(?:organi[sz]ed|disciplined|punctual)\b"),
    (
        "conscientiousness",
        1.0,
        r"\b(?:finished|done)\s+(?:it\s+|everything\s+|my\s+\w+\s+)?(?:early|ahead\s+of\s+time)\b"
        r"|\b(?:met|hit|made)\s+(?:the|my)\s+deadline\b",
    ),
    ("conscientiousness", 1.0, r"\bi\s+always\s+(?:plan|prepare|double[-\s]check)\b"),
    ("conscientiousness", 0.0, r"\bprocrastinat\w*"),
    (
        "conscientiousness",
        0.0,
        r"\b(?:missed|forgot)\s+(?:the|my|another)\s+(?:deadline|appointment|bill|meeting)\b",
    ),
    ("conscientiousness", 0.0, r"\bput(?:ting)?\s+(?:it|things|everything)\s+off\b"),
    ("conscientiousness", 0.0, _IM + _INTENSITY + r"(?:disorgani[sz]ed|messy|lazy)\b"),
    (
        "extraversion",
        1.0,
        r"\bi\s+(?:love|enjoy|loved)\s+(?:meeting|talking\s+to)\s+(?:new\s+)?people\b",
    ),
    ("extraversion", 1.0, _IM + r"(?:an?\s+)?(?:extrovert|outgoing|people\s+person)\b"),
    ("extraversion", 1.0, r"\b(?:parties|people|crowds)\s+(?:energi[sz]e|recharge)\s+me\b"),
    (
        "extraversion",
        1.0,
        r"\bi\s+(?:went|go|love\s+going)\s+(?:out\s+)?(?:to\s+)?(?:a\s+)?part(?:y|ies)\b",
    ),
    ("extraversion", 1.0, r"\bi\s+hate\s+being\s+alone\b|\bcan'?t\s+stand\s+being\s+alone\b"),
    ("extraversion", 0.0, _IM + _INTENSITY + r"(?:an?\s+)?(?:introvert|shy|a\s+homebody)\b"),
    ("extraversion", 0.0, r"\bi\s+prefer\s+(?:to\s+be\s+|being\s+|staying\s+)(?:alone|home|in)\b"),
    (
        "extraversion",
        0.0,
        r"\b(?:crowds|parties|people|socializing|socialising)\s+(?:drain|exhaust|tire)\s+me\b",
    ),
    ("extraversion", 0.0, r"\bi\s+need\s+(?:some\s+)?(?:time|space)\s+(?:alone|to\s+recharge)\b"),
    ("agreeableness", 1.0, r"\b(?:happy|glad)\s+to\s+help\b|\bi\s+forgave\b"),
    (
        "agreeableness",
        1.0,
        r"\bi\s+(?:always\s+)?try\s+to\s+(?:help|understand|see\s+(?:their|his|her)\s+side)\b",
    ),
    ("agreeableness", 1.0, r"\bi\s+care\s+(?:a\s+lot\s+)?about\s+(?:others|other\s+people)\b"),
    (
        "agreeableness",
        1.0,
        r"\bi\s+(?:hate|don'?t\s+like)\s+(?:upsetting|hurting)\s+(?:people|anyone)\b",
    ),
    ("agreeableness", 0.0, r"\bpeople\s+are\s+(?:idiots|stupid|morons|the\s+worst|useless)\b"),
    (
        "agreeableness",
        0.0,
        r"\bi\s+(?:don'?t|do\s+not)\s+care\s+(?:about|what)\s+(?:others|other\s+people|anyone)\b",
    ),
    ("agreeableness", 0.0, r"\bi\s+(?:hold|held)\s+(?:a\s+)?grudges?\b|\bnot\s+my\s+problem\b"),
    ("agreeableness", 0.0, r"\b(?:told|telling)\s+(?:him|her|them)\s+off\b"),
    (
        "neuroticism",
        1.0,
        _IM_OR_FEEL
        + _INTENSITY
        + r"(?:anxious|worried|stressed(?:\s+out)?|nervous|on\s+edge|overwhelmed|insecure)\b",
    ),
    ("neuroticism", 1.0, r"\bcan'?t\s+stop\s+(?:worrying|overthinking)\b|\boverthink\w*"),
    ("neuroticism", 1.0, r"\bpanic\s+attacks?\b|\bmood\s+swings\b"),
    ("neuroticism", 1.0, r"\b(?:everything|little\s+things)\s+(?:upsets?|gets?\s+to)\s+me\b"),
    (
        "neuroticism",
        0.0,
        _IM_OR_FEEL + _INTENSITY + r"(?:calm|relaxed|chill|laid[-\s]back|even[-\s]keeled)\b",
    ),
    ("neuroticism", 0.0, r"\b(?:doesn'?t|does\s+not|don'?t)\s+(?:bother|faze|worry)\s+me\b"),
    ("neuroticism", 0.0, r"\bi\s+(?:rarely|never|don'?t)\s+(?:worry|get\s+stressed|panic)\b"),
)

_COMPILED = tuple(
    (trait, value, re.compile(pattern, re.IGNORECASE)) for trait, value, pattern in _CUES
)


@dataclass(frozen=True, slots=True)
class TraitSignal:
    """One trait's evidence in one message: ``value`` in [0, 1] and the cue that fired."""

    trait: Trait
    value: float
    cue: str


def trait_signals(text: str) -> list[TraitSignal]:
    """At most one signal per trait: the mean pole of the cues that matched."""
    found: dict[Trait, list[tuple[float, str]]] = {}
    for trait, value, pattern in _COMPILED:
        match = pattern.search(text)
        if match is not None:
            found.setdefault(trait, []).append((value, match[0].strip()))
    return [
        TraitSignal(trait, sum(v for v, _ in hits) / len(hits), "; ".join(c for _, c in hits))
        for trait, hits in found.items()
    ]


_GOAL_VERBS = (
    r"(?:learn|run|finish|complete|lose|save|write|quit|stop|start|become|get\s+better\s+at|"
    r"get\s+fit|get\s+a\s+new|get\s+into|pass|build|read|travel|visit|move\s+to|improve|"
    r"train\s+for|practi[cs]e|master|launch|publish|climb|swim|cycle|study|apply\s+for|"
    r"speak|cook|paint|play|earn|pay\s+off|find\s+a)"
)
_GOAL_TAIL = r"(?P<goal>[^.!?\n;]{3,100})"
_GOAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # "my goal is to run a 10k", "my dream this year is to visit Japan"
        r"\bmy\s+(?:main\s+|big\s+|new\s+)?(?:goal|dream|plan|resolution|ambition|aim)"
        r"(?:\s+(?:this|for\s+the|for\s+this)\s+(?:year|month|summer))?\s+is\s+to\s+" + _GOAL_TAIL,
        # "I want to run a 10k", "I'd love to learn Spanish", "I'm trying to quit smoking"
        r"\bi(?:(?:\s+really|\s+finally|\s+also)?\s+(?:want|wanna|hope|plan|intend)"
        r"|(?:['\u2019]d|\s+would)\s+(?:really\s+|also\s+)?(?:like|love)"
        r"|\s*(?:['\u2019]m|\s+am)\s+(?:determined|trying|planning|going))\s+to\s+(?="
        + _GOAL_VERBS
        + r"\b)"
        + _GOAL_TAIL,
        # "I'm training for a marathon", "I'm saving up for a car", "I'm working towards a degree"
        r"\bi\s*(?:['\u2019]m|\s+am)\s+(?P<goal>(?:training|saving(?:\s+up)?|working\s+towards?)\s+"
        r"[^.!?\n;]{3,100})",
    )
)
_GOAL_END = re.compile(r"\s+(?:but|because|since|so\s+that|and\s+i\s)\b.*$", re.IGNORECASE)


def goal_statements(text: str) -> list[str]:
    """The goals a message states, as short phrases ("run a 10k", "learn Spanish")."""
    goals: list[str] = []
    for pattern in _GOAL_PATTERNS:
        for match in pattern.finditer(text):
            goal = _GOAL_END.sub("", match["goal"]).strip(" ,:-")
            if len(goal) >= 3 and goal.lower() not in (g.lower() for g in goals):
                goals.append(goal)
    return goals


_ACHIEVED = re.compile(
    r"\bi\s+(?:did\s+it|finally\s+(?:did|finished|ran|passed|made|got|reached)|finished|"
    r"completed|achieved|passed|made\s+it|reached\s+my\s+goal|hit\s+my\s+goal)\b|\bdone\s+it\b",
    re.IGNORECASE,
)
_ABANDONED = re.compile(
    r"\b(?:i\s+)?(?:gave\s+up\s+on|am\s+giving\s+up\s+on|'m\s+giving\s+up\s+on|quit\s+trying|"
    r"stopped\s+trying|no\s+longer\s+want\s+to|not\s+going\s+to\s+\w+\s+after\s+all)\b"
    r"|\bdon'?t\s+want\s+to\s+\w+(?:\s+\w+)?\s+any\s*more\b",
    re.IGNORECASE,
)
_PROGRESS = re.compile(
    r"\b(?:today|yesterday|this\s+(?:week|morning|month)|so\s+far|halfway|progress|"
    r"getting\s+(?:better|closer)|i\s+managed|i\s+(?:ran|did|wrote|saved|lost|read|practi[cs]ed|"
    r"trained|studied|went|finished|swam|cycled|cooked|learned|learnt)|"
    r"i(?:'ve|\s+have)\s+(?:been|started|now|already|just))\b",
    re.IGNORECASE,
)

ProgressKind = Literal["progress", "achieved", "abandoned"]


def progress_kind(text: str) -> ProgressKind | None:
    """Whether a message reports on a goal: achieved, abandoned, some progress, or nothing."""
    if _ABANDONED.search(text):
        return "abandoned"
    if _ACHIEVED.search(text):
        return "achieved"
    if _PROGRESS.search(text):
        return "progress"
    return None
