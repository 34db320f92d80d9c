"""Layer 1 of the content classifier: phrases per label, and the rule decision.

Narrow patterns for unmistakable cases ("I want to kill myself", "let's
sext", "tie me up"). When several labels match, the most safety-critical
wins (`SEVERITY`): a message that is both romantic and about self-harm is
about self-harm. Patterns stay phrase-level on purpose: a bare "sex" or
"kill" appears in plenty of safe messages ("sex education", "this commute
is killing me").

A stated age under 18 (`content_age.stated_age`), or an age signal without
a number (`content_minor_cues.minor_cue`: a school grade or year, a child
role in role-play, parents or a bedtime as the writer's context), together
with a sexual or romantic label makes the message ``minor_sexual``;
`content.ContentClassifier` applies that rule after the prototypes, because
the sexual part may be one only the prototypes see.

Denials of self-harm ("I would never hurt myself", "I'm not suicidal") are
masked before the self-harm phrases are matched, and alone they make the
message ``safe`` by rule (so confident self-harm prototypes only make it
*unsure*, which asks the judge). Only clear denials are masked: "I don't
want to hurt myself" is what someone fighting an urge says, and a denial
followed by a contrast ("..., but sometimes ...") is not trusted at all.

ARCHITECTURE: the rules read three signals, each in its own module with its
patterns: stated ages (`content_age`), age cues without a number
(`content_minor_cues`) and the label phrases here. `match_content_rules`
combines them into one `RuleMatch`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.classifiers.content_age import (
    MinorSignal,
    declared_age,
    has_minor_signal,
    stated_age,
)
from inference.classifiers.content_minor_cues import minor_cue, unleet

CONTENT_LABELS: tuple[str, ...] = (
    "safe",
    "romantic",
    "explicit",
    "fetish",
    "self_harm",
    "minor_sexual",
    "violent_threat",
    "hate",
)

# Most critical first: the order in which labels win when rules disagree.
SEVERITY: tuple[str, ...] = (
    "minor_sexual",
    "self_harm",
    "violent_threat",
    "hate",
    "fetish",
    "explicit",
    "romantic",
    "safe",
)

# Labels that turn into minor_sexual when the user is (or says they are) under 18.
SEXUAL_LABELS = frozenset({"romantic", "explicit", "fetish"})

RULE_CONFIDENCE = 0.9

_HARM_VERB = r"(?:hurt|harm|kill|cut|end)\w*\s+(?:my\s*self|my\s+(?:own\s+)?life)\b"
_I_AM_NOT = r"\bi\s*(?:['\u2019]\s*m|m|\s+am)\s+(?:not|never|no\s+longer)\s+"
# Clear denials only (module docstring); each is masked before self_harm phrases match.
_SELF_HARM_DENIALS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        # "I would never hurt myself", "I'd never kill myself", "I will never harm myself"
        r"\bi\s*(?:\s+would|['\u2019]d|\s+will|['\u2019]ll|\s+could)?\s+never\s+(?:ever\s+)?"
        + _HARM_VERB,
        # "I won't hurt myself", "I'm not going to kill myself", "I am not gonna hurt myself"
        r"\bi\s+(?:won['\u2019]?t|will\s+not|wouldn['\u2019]?t|would\s+not)\s+(?:ever\s+)?"
        + _HARM_VERB,
        _I_AM_NOT + r"(?:going\s+to|gonna)\s+" + _HARM_VERB,
        # "I'm not suicidal", "I am no longer suicidal", "never been suicidal"
        _I_AM_NOT + r"(?:feeling\s+|at\s+all\s+)?suicidal\b",
        r"\bnot\s+(?:feeling\s+)?suicidal\b|\bnever\s+(?:been|felt)\s+suicidal\b",
        r"\bno\s+(?:suicidal\s+thoughts|(?:intention|plans?|thoughts?|desire)\s+(?:of|to)\s+"
        + _HARM_VERB
        + r")",
    )
)
# Masked too, but no reassurance: "I don't want to die" is fear of dying, not safety.
_FEAR_OF_DYING = re.compile(r"\b(?:don['\u2019]?t|do\s+not)\s+want\s+to\s+die\b", re.IGNORECASE)
# A denial followed by one of these is not trusted: "I'm not suicidal, but ...".
_CONTRAST = re.compile(
    r"\b(?:but|though|although|yet|except|sometimes|some\s+days|lately|unless|still)\b",
    re.IGNORECASE,
)
# Clear signs that a crisis is easing; "I'm fine" alone is not one (it often masks).
_DE_ESCALATION: tuple[re.Pattern[str], ...] = tuple(
    re.compile(pattern, re.IGNORECASE)
    for pattern in (
        r"\bi\s*(?:['\u2019]\s*m|m|\s+am)\s+(?:feeling\s+)?(?:a\s+lot\s+|much\s+|a\s+bit\s+|way\s+)?"
        r"(?:better|safe|okay|ok|alright|all\s+right|calmer)\s+now\b",
        r"\bi\s*(?:['\u2019]\s*m|m|\s+am)\s+safe\b|\bi\s+feel\s+(?:a\s+lot\s+|much\s+|a\s+bit\s+|way\s+)?"
        r"(?:better|safer|calmer)\b",
        r"\b(?:the\s+)?(?:urges?|feelings?|thoughts?)\s+(?:has|have|is|are)\s+(?:gone|passed)\b",
        r"\bi\s+(?:talked|spoke|called|texted|reached\s+out)\s+(?:to\s+)?(?:my\s+|a\s+|the\s+)?"
        r"(?:therapist|counsell?or|doctor|friend|someone|hotline|helpline|crisis\s+line|"
        r"mum|mom|dad|family|sister|brother|partner)\b",
    )
)

_PHRASES: dict[str, tuple[str, ...]] = {
    "self_harm": (
        r"\b(?:kill|hurt|harm|cut|hang|drown|poison)\s+my\s*self\b",
        r"\bend(?:ing)?\s+(?:my\s+(?:own\s+)?life|it\s+all|things\s+for\s+good)\b",
        r"\bsuicid(?:e|al)\b|\bself[-\s]?harm(?:ing)?\b|\bunalive\b",
        r"\b(?:want|wanna|going|ready)\s+to\s+die\b|\bwish\s+i\s+(?:was|were)\s+dead\b",
        r"\bwish\s+i\s+(?:could\s+)?(?:just\s+)?(?:disappear|stop\s+existing|never\s+wake\s+up)\b",
        r"\bdon'?t\s+want\s+to\s+(?:be\s+here|live|exist|wake\s+up)\s*(?:anymore|any\s+more)?\b",
        r"\bno\s+(?:reason|point)\s+(?:to|in)\s+(?:live|living|going\s+on)\b",
        r"\b(?:better\s+off\s+(?:without\s+me|dead)|take\s+all\s+(?:my|the)\s+pills)\b",
        r"\boverdose\b|\bcan'?t\s+go\s+on\s+(?:anymore|like\s+this)\b",
        # Death as a sleep wished for ("I want to sleep forever", "fall asleep and never
        # wake up"), swallowing a whole supply ("swallow everything in the medicine
        # cabinet"), and a last night announced ("tonight is going to be my last night").
        r"\b(?:want|wanna|going|wish\s+i\s+could|ready)\s+(?:to\s+)?sleep\s+forever\b"
        r"|\b(?:sleep|fall\s+asleep)\s+and\s+(?:never|not)\s+wake\s+up\b",
        r"\bswallow\s+(?:everything|all\s+(?:of\s+)?(?:my|the|these|those))\b",
        r"\b(?:going\s+to\s+be|will\s+be|is)\s+my\s+last\s+(?:night|day)\b"
        r"(?!\s+(?:in|at|of|here|there|with|before|as|on\s+the\s+job))"
        r"|\bmy\s+last\s+(?:night|day)\s+(?:alive|on\s+earth)\b",
    ),
    "violent_threat": (
        r"\bi\s*(?:'ll|\s+will|'m\s+going\s+to|\s+am\s+going\s+to|'m\s+gonna|\s+want\s+to|"
        r"\s+wanna|\s+swear\s+i'?ll)\s+(?:kill|murder|stab|shoot|strangle|beat\s+up|hurt|"
        r"burn\s+down|blow\s+up)\s+(?:you|him|her|them|everyone|my\s+\w+|his|their|the)\b",
        r"\b(?:you(?:'re|\s+are)\s+(?:dead|going\s+to\s+die)|i\s+know\s+where\s+you\s+live)\b",
        r"\bshoot\s+up\s+(?:the|my|a)\s+\w+|\bbomb\s+(?:the|my|a|their)\s+\w+",
        r"\bmake\s+(?:him|her|them|you)\s+(?:pay|suffer|bleed)\b",
    ),
    "hate": (
        r"\b(?:all|those|these|the)\s+\w+\s+(?:are|is)\s+(?:vermin|subhuman|animals|"
        r"parasites|a\s+disease|cockroaches|inferior)\b",
        r"\b\w+\s+should\s+(?:all\s+)?(?:be\s+(?:exterminated|wiped\s+out|gassed|deported|"
        r"eradicated)|die|go\s+back\s+to\s+where)\b",
        r"\bi\s+hate\s+(?:all\s+)?(?:muslims|jews|christians|blacks|whites|asians|"
        r"immigrants|gays|lesbians|trans\s+people|women|men|mexicans|arabs|refugees)\b",
        r"\b(?:inferior|master)\s+race\b|\bethnic\s+cleansing\b|\bwhite\s+power\b",
    ),
    "fetish": (
        r"\bfetish\w*|\bkink(?:y|s)?\b|\bbdsm\b|\bbondage\b",
        r"\b(?:dominate|spank|humiliate|degrade|restrain|tie)\s+me\b",
        r"\btie\s+me\s+up\b|\bcall\s+me\s+your\s+(?:pet|slave|good\s+(?:girl|boy))\b",
        r"\b(?:be\s+my|you(?:'re|\s+are)\s+my)\s+(?:mistress|master|dom|domme|sub)\b",
        r"\b(?:foot|feet)\s+(?:pics|worship|fetish)\b|\blatex\b|\bsubmissive\b",
        # Domination vocabulary: the titles, the acts asked for, the postures ordered.
        r"\bdominatrix\b|\b(?:humiliat|degrad)(?:e|ed|ing)\s+(?:me|by\s+you)\b"
        r"|\bdisciplin(?:e|ary)\s+(?:roleplay|role-play|scene|session)\b"
        r"|\b(?:make|let)\s+me\s+(?:kneel|beg|crawl|grovel)\b"
        r"|\bcall\s+you\s+(?:master|mistress|goddess|my\s+(?:master|mistress|owner))\b",
    ),
    "explicit": (
        r"\bsext(?:ing)?\b|\bnudes?\b|\bnudez\b|\bnoodz\b|\bnsfw\b|\blewd\b|\berotic\w*\b|\bx-?rated\b",
        r"\b(?:dirty\s+talk|talk\s+dirty)\b|\bhorny\b|\bturn(?:s|ing)?\s+me\s+on\b",
        r"\b(?:have|having)\s+sex\b|\bsex\s+(?:with|chat)\b|\bmake\s+love\s+to\b",
        r"\b(?:get|getting)\s+naked\b|\btake\s+(?:off\s+)?(?:your|my)\s+clothes\b|\bundress\b",
        r"\bspicy\s+(?:roleplay|chat|scene)\b|\b18\+\s+(?:roleplay|chat|content)\b",
        r"\bin\s+bed\s+(?:together|with\s+me)\b.*\b(?:tonight|now)\b|\bseduce\s+me\b",
        # A suggestive adjective on something to share or do together ("a steamy chat",
        # "sexy pics", "a naughty roleplay"), or "getting" that way ("let's get spicy"):
        # the noun keeps out food, showers and cats.
        r"\b(?:steamy|spicy|naughty|sexy|kinky|raunchy|saucy|sultry)\s+(?:\w+\s+)?(?:chat|"
        r"talk|roleplay|role-play|rp|story|scene|pics?|photos?|selfies?|messages?|texts?)\b",
        r"\b(?:get|getting|gets)\s+(?:a\s+(?:bit|little)\s+)?(?:spicy|steamy|naughty|frisky|"
        r"intimate|physical|freaky)\b",
    ),
    "romantic": (
        r"\bi\s+(?:really\s+)?(?:love|adore)\s+you\b|\bi(?:'ve|\s+have)\s+fallen\s+for\s+you\b",
        r"\b(?:kiss|cuddle|hug|hold)\s+me\b|\bhold\s+my\s+hand\b",
        r"\bbe\s+my\s+(?:girlfriend|boyfriend|partner|valentine)\b|\bgo\s+on\s+a\s+date\b",
        r"\b(?:crush\s+on\s+you|miss\s+you\s+so\s+much|you(?:'re|\s+are)\s+(?:so\s+)?cute)\b",
        r"\b(?:sweetheart|my\s+love|darling|babe)\b",
    ),
}

_COMPILED: dict[str, tuple[re.Pattern[str], ...]] = {
    label: tuple(re.compile(pattern, re.IGNORECASE) for pattern in patterns)
    for label, patterns in _PHRASES.items()
}


@dataclass(frozen=True, slots=True)
class RuleMatch(MinorSignal):
    """What the rules found: a label (None when no phrase matched), why, and a stated age.

    ``declared_age``: the stated age when it is sincerely the writer's own
    (`declared_age`); ``de_escalation``: the message says a crisis is easing
    ("I feel better now", "I would never hurt myself").
    """

    label: str | None
    confidence: float
    reasons: tuple[str, ...]
    age: int | None
    declared_age: int | None = None
    de_escalation: bool = False
    minor_cue: str | None = None


def match_content_rules(text: str) -> RuleMatch:
    """Run every pattern over ``text``; the most severe matching label wins."""
    masked, denied = mask_self_harm_denials(text)
    masked, feared = _mask(masked, (_FEAR_OF_DYING,))
    plain = unleet(masked)
    hits = {label for label, patterns in _COMPILED.items() if _any_match(patterns, plain)}
    age, cue = stated_age(text), minor_cue(text)
    reasons = [f"rule: {label} phrase" for label in SEVERITY if label in hits]
    if denied:
        reasons.append("rule: denies self-harm")
    if feared:
        reasons.append("rule: fear of dying, not a wish to")
    if age is not None:
        reasons.append(f"rule: stated age {age}")
    if cue is not None:
        reasons.append(f"rule: minor cue ({cue})")
    label = next((name for name in SEVERITY if name in hits), "safe" if denied or feared else None)
    if label in SEXUAL_LABELS and has_minor_signal(age, cue):
        label = "minor_sexual"
        reasons.append("rule: sexual or romantic request with a minor signal")
    confidence = RULE_CONFIDENCE if label is not None else 0.0
    calmer = label != "self_harm" and (denied or is_de_escalation(text))
    return RuleMatch(label, confidence, tuple(reasons), age, declared_age(text), calmer, cue)


def mask_self_harm_denials(text: str) -> tuple[str, bool]:
    """``text`` with clear denials of self-harm blanked out, and whether there were any.

    A denial followed anywhere by a contrast ("but", "sometimes") is left in:
    the message is then matched as if it had none.
    """
    return _mask(text, _SELF_HARM_DENIALS)


def _mask(text: str, patterns: tuple[re.Pattern[str], ...]) -> tuple[str, bool]:
    masked, found_any = text, False
    for pattern in patterns:
        for found in pattern.finditer(text):
            if _CONTRAST.search(text, found.end()):
                continue
            masked = masked[: found.start()] + " " * len(found[0]) + masked[found.end() :]
            found_any = True
    return masked, found_any


def is_de_escalation(text: str) -> bool:
    """Whether the message clearly says a crisis is easing, with no "but" after it."""
    for pattern in _DE_ESCALATION:
        found = pattern.search(text)
        if found is not None and not _CONTRAST.search(text, found.end()):
            return True
    return False


def severity_rank(label: str) -> int:
    """0 for the most critical label; larger is milder."""
    return SEVERITY.index(label)


def _any_match(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(pattern.search(text) for pattern in patterns)
