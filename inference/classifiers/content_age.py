"""Ages the writer states in numbers: "I'm 15", "I am 16 years old", "im 14",
"as a 13 year old", "I just turned 17".

`stated_age` finds the first first-person age statement (5 to 120; "I'm 15
minutes late" and "I am 5 foot 2" are not ages). `declared_age` is stricter:
the age must be the writer's own, sincerely (not quoted, reported, pretended
or "I feel like I'm 15 again"). A stated minor age is enough to block sexual
content; only a declared one may flag the user as a minor for good.

ARCHITECTURE: one of the three signal modules of the content rules (layer 1
of `content.ContentClassifier`): this one, `content_minor_cues` (age signals
without a number) and the label phrases with the decision in `content_rules`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

ADULT_AGE = 18
_MIN_AGE, _MAX_AGE = 5, 120

_NUMBER_WORDS = {
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
_NUMBER = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"
_I_AM = r"\bi\s*(?:['\u2019]\s*m|m|\s+am)\s+"
_YEARS_OLD = r"\s*-?\s*(?:years?|yrs?|yr)\s*-?\s*old\b|\s*(?:yo|y/o|y\.o\.)\b"
# "I'm 20 minutes away", "I am 5 foot 2": a number followed by a unit is not an age.
_NOT_AN_AGE = (
    r"(?!\s*(?:minutes?|mins?|hours?|hrs?|h\b|days?|weeks?|months?|seconds?|secs?|km|"
    r"miles?|meters?|metres?|m\b|feet|foot|ft|cm|inches|kg|kilos?|lbs?|pounds?|%|percent|"
    r"dollars?|bucks|euros?|am\b|pm\b|o'?clock|:|\.\d|,\d|th\b|st\b|nd\b|rd\b|x\b|times?|"
    r"people|of\b|out\b|points?|steps?|pages?|in\b|on\b|and\s+a\s+half|years?\s+(?!old))|"
    r"\s*years?\s+old\s+(?:when|at|back))"
)
_AGE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # "I'm 15", "im 14", "I am 16 years old", "I'm only 13 yo"
        _I_AM + r"(?:only\s+|just\s+|almost\s+|nearly\s+)?" + _NUMBER + r"\b" + _NOT_AN_AGE,
        # "I'm a 15 year old girl", "as a 13 year old", "as a 16yo"
        r"(?:" + _I_AM + r"|\bas\s+)an?\s+" + _NUMBER + r"(?:" + _YEARS_OLD + r")",
        # "I just turned 17", "I turn 16 next week"
        r"\bi\s+(?:just\s+|recently\s+)?(?:turned|turn)\s+" + _NUMBER + r"\b" + _NOT_AN_AGE,
        # "my age is 15", "age: 14"
        r"\bmy\s+age\s+is\s+" + _NUMBER + r"\b|^\s*age\s*:?\s*" + _NUMBER + r"\b",
        # "15 years old here", "14 yo btw", "16 m", starting the message
        r"^\s*" + _NUMBER + r"(?:" + _YEARS_OLD + r")",
    )
)


def is_minor(age: int | None) -> bool:
    """Whether ``age`` is known and under 18."""
    return age is not None and age < ADULT_AGE


def has_minor_signal(age: int | None, minor_cue: str | None) -> bool:
    """A stated age under 18, or an age signal without a number (`content_minor_cues`)."""
    return minor_cue is not None or is_minor(age)


class MinorSignal:
    """Mixed into the results that carry a stated ``age`` and a ``minor_cue``
    (`content_rules.RuleMatch`, `content.ContentResult`): one definition of
    what counts as a minor signal for both."""

    __slots__ = ()
    age: int | None
    minor_cue: str | None

    @property
    def minor_signal(self) -> bool:
        """A stated age under 18 or an age signal without a number (`minor_cue`)."""
        return has_minor_signal(self.age, self.minor_cue)


def stated_age(text: str) -> int | None:
    """The age the writer states about themself, if any (5 to 120; else None)."""
    return next((age for age, _ in _age_matches(text)), None)


def declared_age(text: str) -> int | None:
    """A stated age the writer sincerely claims as their own now, else None.

    Stricter than `stated_age`, because a declared minor age flags the user
    for good: not inside double quotes or a quoted line ("> I'm 15"), not
    reported ("she said I'm 15"), pretended ("pretend I'm 14", "in the
    roleplay"), compared ("I feel like I'm 15 again") or taken back ("jk").
    """
    return next((age for age, found in _age_matches(text) if _sincere(text, found)), None)


def _age_matches(text: str) -> Iterator[tuple[int, re.Match[str]]]:
    for pattern in _AGE_PATTERNS:
        for found in pattern.finditer(text):
            age = _to_int(next(group for group in found.groups() if group))
            if _MIN_AGE <= age <= _MAX_AGE:
                yield age, found


_QUOTES = frozenset('"\u201c\u201d\u00ab\u00bb')
_NOT_SINCERE_BEFORE = re.compile(
    r"\b(?:said|says|say|saying|told|tells|tell|wrote|writes|asked|asks|texted|replied|"
    r"claims?|claimed|pretend\w*|role[-\s]?play\w*|rp|imagine|what\s+if|as\s+if|"
    r"(?:feel|feels|felt|act|acting|look|looks)\s+like|wish|character|story|scenario|"
    r"playing|lying|lie)\b",
    re.IGNORECASE,
)
_NOT_SINCERE_AFTER = re.compile(
    r"^[\s,]*(?:years?\s+old\s+|yo\s+)?(?:again|at\s+heart|inside|mentally|in\s+spirit|"
    r"in\s+(?:dog|cat)\s+years|jk|just\s+kidding|kidding|not\s+really|lol\s+jk)\b",
    re.IGNORECASE,
)


def _sincere(text: str, found: re.Match[str]) -> bool:
    before = text[: found.start()]
    if sum(char in _QUOTES for char in before) % 2:
        return False
    line = before[before.rfind("\n") + 1 :]
    if line.lstrip().startswith(">"):
        return False
    clause = re.split(r"[.!?;\n]", before)[-1]
    if _NOT_SINCERE_BEFORE.search(clause):
        return False
    return not _NOT_SINCERE_AFTER.search(text[found.end() :])


def _to_int(token: str) -> int:
    lowered = token.lower()
    return _NUMBER_WORDS[lowered] if lowered in _NUMBER_WORDS else int(lowered)
