"""Layer 1 of the emotion classifier: patterns for unmistakable cases.

Only explicit, first-person statements of a feeling ("I'm so happy", "I'm
terrified"), direct hostility ("I hate you"), exclamations ("that's
disgusting", "no way!") and emoji decide here. Anything hedged is left to the
trained head: a rule never fires on a question, on a negated clause ("I'm not
happy", "never been so scared"... both skipped), or when hits point to two
different emotions. Missing a clear case costs little (the head sees it next);
a wrong rule hit is never corrected, so the patterns stay narrow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Evaluated on GoEmotions dev (docs/understanding.md): a rule decides a few
# percent of rows and is right far more often than the head is on average.
RULE_CONFIDENCE = 0.9

_INTENSIFIER = (
    r"(?:(?:so|really|very|truly|extremely|absolutely|super|incredibly|genuinely|just)\s+)*"
)
_I_AM = r"\bi(?:\s*['\u2019]\s*m|m|\s+am|\s+feel)\s+" + _INTENSIFIER
_NEGATION = re.compile(
    r"\b(?:not|no|never|n't|nt|hardly|barely|without|if|unless|would|wouldn't|won't|"
    r"don't|doesn't|didn't|isn't|wasn't|aren't|can't|cannot|stop|pretend)\b|n['\u2019]t\b",
    re.IGNORECASE,
)


def _i_am(words: str) -> str:
    return _I_AM + r"(?:" + words + r")\b"


_PATTERNS: dict[str, tuple[str, ...]] = {
    "joy": (
        _i_am(
            r"happy|glad|thrilled|delighted|overjoyed|ecstatic|excited|grateful|thankful|"
            r"so proud|proud of you|in love|over the moon|blessed"
        ),
        r"\bi\s+(?:really\s+|absolutely\s+|just\s+)?(?:love|adore)\s+(?:it|this|that|you|them)\b",
        r"\bthank\s+you\s+(?:so|very)\s+much\b|\bthanks\s+so\s+much\b",
        r"\bthis\s+(?:made|makes)\s+my\s+day\b",
        r"\bbest\s+day\s+ever\b",
    ),
    "anger": (
        r"\bi\s+(?:fucking\s+|really\s+|absolutely\s+|just\s+|so\s+)?(?:hate|despise|loathe)\s+"
        r"(?:you|him|her|them|this|that|it|everyone|people)\b",
        _i_am(r"furious|livid|pissed(?:\s+off)?|enraged|outraged|so angry|angry|mad at"),
        r"\b(?:fuck|screw)\s+(?:you|off|this|that|them|him|her)\b",
        r"\bshut\s+(?:the\s+fuck\s+)?up\b",
    ),
    "fear": (
        _i_am(
            r"terrified|scared|afraid|frightened|petrified|horrified|panicking|"
            r"anxious|worried|nervous|freaking out"
        ),
        r"\bscares\s+(?:me|the\s+(?:shit|hell|crap)\s+out\s+of\s+me)\b",
        r"\bi(?:'m|\s+am)\s+(?:so\s+)?scared\s+of\b",
    ),
    "sadness": (
        _i_am(
            r"sad|depressed|heartbroken|devastated|miserable|lonely|"
            r"crushed|gutted|broken\s?hearted"
        ),
        r"\bi\s+miss\s+(?:you|him|her|them|my)\b",
        r"\b(?:sorry|condolences)\s+for\s+your\s+loss\b",
        r"\bi\s+(?:want|wanted)\s+to\s+cry\b|\bi(?:'m|\s+am)\s+crying\b",
        r"\brest\s+in\s+peace\b|\brip\s+(?:to|buddy|my)\b",
    ),
    "disgust": (
        r"\b(?:that'?s|this\s+is|that\s+is|it'?s|how)\s+(?:so\s+|absolutely\s+|fucking\s+|just\s+)?"
        r"(?:disgusting|gross|revolting|repulsive|nauseating|vile|sickening)\b",
        _i_am(r"disgusted|grossed out|repulsed|sickened"),
        r"\b(?:ew+|eww+|yuck|ugh+,?\s+gross)\b",
        r"\bmakes\s+me\s+(?:sick|want\s+to\s+(?:puke|vomit|throw\s+up))\b",
    ),
    "surprise": (
        _i_am(r"shocked|surprised|amazed|astonished|stunned|speechless|blown away"),
        r"\bi\s+can'?t\s+believe\s+(?:it|this|what)\b",
        r"^\s*(?:wow+|whoa+|woah+|omg|oh\s+my\s+god|no\s+way)\s*[!.]*\s*$",
        r"\bwhat\s+a\s+surprise\b",
    ),
}

_EMOJI: dict[str, str] = {
    "joy": "😀😃😄😁😆😊🙂🥰😍🤩😂🤣❤💕💖💗😘🥳🎉👏🙌😻",
    "sadness": "😢😭😞😔😟🥺💔😿☹🙁😥",
    "anger": "😠😡🤬👿💢🖕",
    "fear": "😨😰😱😧😬",
    "disgust": "🤢🤮😷🤧",
    "surprise": "😮😯😲🤯😳",
}

_COMPILED: dict[str, tuple[re.Pattern[str], ...]] = {
    label: tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)
    for label, patterns in _PATTERNS.items()
}
_CLAUSE_SPLIT = re.compile(r"(?<=[.!?;\n])\s+|\s+(?:but|though|although|however)\s+", re.I)


@dataclass(frozen=True, slots=True)
class RuleHit:
    """A rule's decision: the label and the confidence the classifier reports for it."""

    label: str
    confidence: float


def match_rules(text: str) -> RuleHit | None:
    """The label when the text is an unmistakable case, else None (let the model decide)."""
    labels = _clause_labels(text) | _emoji_labels(text)
    if len(labels) != 1:
        return None  # nothing clear, or mixed feelings: not a case for rules
    return RuleHit(labels.pop(), RULE_CONFIDENCE)


def _clause_labels(text: str) -> set[str]:
    labels: set[str] = set()
    for clause in _CLAUSE_SPLIT.split(text):
        if not clause or clause.rstrip().endswith("?"):
            continue  # "are you happy?" asks, it does not tell
        for label, patterns in _COMPILED.items():
            if any(_affirmed(pattern, clause) for pattern in patterns):
                labels.add(label)
    return labels


def _affirmed(pattern: re.Pattern[str], clause: str) -> bool:
    """Whether ``pattern`` matches with no negation or hypothetical before it in the clause."""
    found = pattern.search(clause)
    if found is None:
        return False
    return _NEGATION.search(clause[: found.start()]) is None


def _emoji_labels(text: str) -> set[str]:
    return {label for label, chars in _EMOJI.items() if any(char in text for char in chars)}
