"""Age signals without a number ("minor cues") and leetspeak undone.

`minor_cue` names the class of the first cue in a message: the writer is a
child or at school ("I'm an 8th grader", "im in year 9"), a child role in a
role-play, a minor in the requested story or scene, or parents and a bedtime
as the writer's present context. A cue in a memory ("when I was in 8th
grade", "I used to ...") does not count. `unleet` reads digits inside words
as letters ("s3xt" -> "sext") before any phrase is matched.

ARCHITECTURE: one of the three signal modules of the content rules (see
`content_age`); `content_rules.match_content_rules` combines them.
"""

from __future__ import annotations

import re

# Age signals that are not a stated number ("minor cues"). Each pattern below is a
# class of phrasing, described in its comment; a cue alone changes nothing, but with
# any sexual or romantic signal (a rule phrase or the prototypes) the message is
# ``minor_sexual``. Third-person mentions ("my daughter is in 7th grade") and the
# past ("when I was in 8th grade") are deliberately not cues: parents, teachers and
# adults remembering school talk like that.
_ORDINAL = (
    r"(?:\d{1,2}\s*(?:st|nd|rd|th)|first|second|third|fourth|fifth|sixth|seventh|eighth|"
    r"eigth|ninth|nineth|tenth|eleventh|twelfth)"
)
_UNDER_18 = (
    r"(?:[1-9]|1[0-7]|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
    r"thirteen|fourteen|fifteen|sixteen|seventeen)"
)
_SCHOOL = r"(?:middle|high|junior\s+high|jr\.?\s*high|elementary|primary|secondary|grade)"
# "school" as it is also spelt in chat: "skool", "skewl", "scool", "schol".
_SCHOOL_WORD = r"(?:school|skool|skewl|skul|scool|schol)"
# Nouns that name someone under 18: a pupil by school stage ("8th grader", "middle
# schooler", "high school student", "year 7 pupil", "sophomore in high school"), a
# child or teen word ("kid", "little girl", "preteen", "schoolgirl"), or an age
# under 18 written as a noun ("a 12yo", "a 14 year old").
_PUPIL = (
    r"(?:" + _ORDINAL + r"\s*-?\s*(?:grader|grade\s+(?:student|pupil|girl|boy|kid))"
    r"|" + _SCHOOL + r"\s*-?\s*" + _SCHOOL_WORD + r"(?:er|\s+(?:student|pupil|girl|boy|kid))"
    r"|(?:year|yr|grade|gr)\s*-?\s*\d{1,2}\s+(?:student|pupil|girl|boy|kid)"
    r"|(?:freshm[ae]n|soph(?:o)?more|junior|senior)\s+(?:in|at)\s+(?:high\s+school|hs\b|secondary)"
    r"|(?:hs|high\s+school)\s+(?:freshm[ae]n|soph(?:o)?more|junior|senior))\b"
)
_MINOR_NOUN = (
    r"(?:" + _PUPIL + r"|school\s*-?\s*(?:girl|boy)s?|kids?|child|children|underage|toddler"
    r"|minor(?!\s+(?:league|character|role|part|detail|issue|problem|injury|surgery|key|chord))"
    r"|(?:pre-?)?teen(?:ager)?s?(?!\s+years)|tween|little\s+(?:girl|boy|student|sister|brother)"
    r"|young\s+(?:girl|boy|student|teen)"
    r"|" + _UNDER_18 + r"\s*-?\s*(?:years?|yrs?|yr)\s*-?\s*old|(?:[1-9]|1[0-7])\s*(?:yo|y/o)\b"
    r")\b(?!\s+(?:at\s+heart|again|inside|years?\s+ago))"
)
# Being at school now: "I'm in 8th grade", "in year 9", "in middle school", "im in 7th".
_AT_SCHOOL = (
    r"in\s+(?:the\s+)?(?:" + _ORDINAL + r"\s*-?\s*(?:grade|grd|gr|form|year)\b"
    r"|(?:grade|grd|year|yr)\s*-?\s*\d{1,2}\b|"
    + _SCHOOL
    + r"\s*-?\s*"
    + _SCHOOL_WORD
    + r"\b|junior\s+high\b"
    r"|jr\.?\s*high\b|hs\b|elementary\b|primary\b"
    r"|\d{1,2}(?:st|nd|rd|th)(?=\s*(?:[,.!?;]|$|and\b|lol\b|btw\b)))"
)
# Words that may stand between a frame and the noun without changing who it is about.
_FILLER = (
    r"(?:(?:just|only|still|technically|really|currently|now|a|an|the|my|your|our|this|"
    r"some|lil|little|young|cute|shy|sweet|innocent|naive|new|naughty|nice|teen|"
    r"girl|boy)\s+){0,3}"
)
_I_AM_NOW = r"(?:\bi\s*(?:['\u2019]\s*m|m|\s+am)|\bim)\s+"
_ROLE_FRAME = (
    r"\b(?:pretend(?:ing)?|role[-\s]?play(?:ing)?|rp|act(?:ing)?|play(?:ing)?|be|imagine|"
    r"make\s+believe)\s+(?:to\s+be\s+|as\s+|that\s+|like\s+)?"
    r"(?:you(?:['\u2019]re|\s+are|\s+r)?\s+|ur\s+|i(?:['\u2019]m|\s+am|m)\s+|me\s+)?(?:now\s+)?"
)
_CONTENT_FRAME = (
    r"\b(?:story|scene|roleplay|role-play|rp|fantasy|fanfic|fic|chapter|night|date|chat|"
    r"script|dream)\s+(?:\w+\s+){0,3}?(?:about|with|involving|featuring|starring|where|of)\s+"
)
_PARENT = r"(?:mom|mum|mommy|mummy|mother|dad|daddy|father|parents|folks|step-?(?:mom|mum|dad))"
_CUE_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The writer says they are a minor now, without a number: "I'm an 8th grader",
    # "im in year 9", "I'm still in middle school", "I'm just a kid", "I'm a teen",
    # "I go to junior high", "I'm underage", "I'm not 18 yet", "me and you, a middle
    # schooler". "As a kid ..." starts
    # an adult's childhood memory, so "as a" counts only before a school stage.
    (
        "the writer is a child or at school",
        (
            _I_AM_NOW + _FILLER + r"(?:" + _MINOR_NOUN + r"|" + _AT_SCHOOL + r")",
            r"\bas\s+an?\s+" + _FILLER + _PUPIL,
            # in apposition to the writer or the assistant: "me, a middle schooler"
            r"\b(?:me|you)(?:\s+and\s+(?:me|you))?\s*,\s*(?:an?\s+)?" + _FILLER + _MINOR_NOUN,
            r"\bi\s+(?:go\s+to|attend)\s+(?:" + _SCHOOL + r"\s*" + _SCHOOL_WORD + r"|junior\s+high|"
            r"jr\.?\s*high|elementary|primary)\b",
            r"\b(?:i(?:['\u2019]m|\s+am|m)\s+|^\s*)not\s+(?:18|eighteen|an\s+adult|"
            r"a\s+grown-?up)(?:\s+yet)?\b",
        ),
    ),
    # A child role in a role-play or pretend frame, for the assistant or the writer:
    # "pretend you're a 12yo", "roleplay as my little student", "be a kid for me",
    # "I'll be the little girl", "you are now a schoolboy", "pretend you're 12".
    (
        "a child role in role-play",
        (
            _ROLE_FRAME + _FILLER + r"(?:" + _MINOR_NOUN + r"|" + _AT_SCHOOL + r")",
            _ROLE_FRAME + _UNDER_18 + r"(?=\s*(?:[,.!?;]|$|and\b|now\b))",
            r"\b(?:you(?:['\u2019]re|\s+are)|ur|i(?:['\u2019]ll|\s+will)\s+be)\s+(?:now\s+)?"
            + _FILLER
            + _MINOR_NOUN,
        ),
    ),
    # A minor as the subject of requested content: "a scene with a schoolgirl",
    # "a story about a seventh grader", "a night in bed with a 14 year old character".
    ("a minor in the requested story or scene", (_CONTENT_FRAME + _FILLER + _MINOR_NOUN,)),
    # Parents and bedtimes as the writer's present context: "before my mom gets
    # home", "after my bedtime", "my parents check my phone", "don't tell my dad",
    # "I'm grounded", "I have to be in bed by 9".
    (
        "parents or bedtime as the writer's context",
        (
            r"\b(?:before|until|till|when|after|once|while)\s+my\s+" + _PARENT + r"\s+"
            r"(?:gets?|comes?|are|is|goes?|falls?)\s+(?:home|back|asleep|to\s+(?:sleep|bed)|out)\b",
            r"\bmy\s+" + _PARENT + r"\s+(?:checks?|took|takes|confiscated|reads?|monitors?|"
            r"(?:would|will)\s+kill\s+me|can['\u2019]?t\s+(?:know|find\s+out|see)|"
            r"(?:won['\u2019]?t|don['\u2019]?t|doesn['\u2019]?t|never)\s+let\s+me|"
            r"(?:will\s+)?never\s+find\s+out|(?:are|is)\s+(?:asleep|sleeping|out|away)|"
            r"picks?\s+me\s+up)\b",
            r"\bdon['\u2019]?t\s+tell\s+my\s+(?:mom|mum|dad|parents)\b",
            r"\b(?:after|past|before|until)\s+my\s+bedtime\b|\bmy\s+bedtime\s+is\b",
            r"\bi(?:['\u2019]m|\s+am|m)\s+grounded\b|\bmy\s+curfew\b|\blights\s+out\b",
            r"\b(?:have|got)\s+to\s+be\s+in\s+bed\s+by\b|\bsupposed\s+to\s+be\s+(?:asleep|in\s+bed)\b",
        ),
    ),
)
_MINOR_CUES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile("|".join(patterns), re.IGNORECASE | re.MULTILINE))
    for name, patterns in _CUE_CLASSES
)
# Digits inside a word are leetspeak ("s3xt", "h1gh sch00l", "n00dz"); ages and grades
# ("13yo", "8th", "yr10") have no letter on both sides, so they are left alone.
_LEET = re.compile(r"(?<=[a-z])[013457@$]+(?=[a-z])", re.IGNORECASE)
_LEET_LETTERS = str.maketrans("013457@$", "oieastas")


def unleet(text: str) -> str:
    """``text`` with leetspeak digits inside words read as letters ("s3xt" -> "sext")."""
    return _LEET.sub(lambda found: found[0].translate(_LEET_LETTERS), text)


# A cue in a clause that is a memory is about the writer's past, not their age now:
# "I used to sneak out after my bedtime", "Growing up, my parents checked my phone".
# The memory may be the cue's own clause or a fronted adverbial opening its sentence.
_MEMORY_OPENER = (
    r"(?:when\s+i\s+was|back\s+(?:in|when|then)|growing\s+up|years\s+ago|as\s+a\s+(?:kid|"
    r"child|teen(?:ager)?|little\s+(?:girl|boy))|in\s+my\s+(?:childhood|teens|youth)|"
    r"i\s+remember|remember\s+when)\b"
)
_MEMORY = re.compile(r"\b(?:used\s+to|" + _MEMORY_OPENER + r")", re.IGNORECASE)
_FRONTED_MEMORY = re.compile(r"^\s*" + _MEMORY_OPENER + r"[^,]*,", re.IGNORECASE)


def minor_cue(text: str) -> str | None:
    """The class of the first age signal without a number in ``text``, else None."""
    plain = unleet(text)
    for name, pattern in _MINOR_CUES:
        if any(not _in_memory(plain, found) for found in pattern.finditer(plain)):
            return name
    return None


def _in_memory(text: str, found: re.Match[str]) -> bool:
    sentence = re.split(r"[.!?;\n]", text[: found.start()])[-1]
    clause = sentence.split(",")[-1]
    return bool(_MEMORY.search(clause + found[0]) or _FRONTED_MEMORY.match(sentence))
