"""Layer 1 of the content classifier: terms, phrases and stated ages.

Narrow patterns for unmistakable cases ("I want to kill myself", "let's
sext", "tie me up"), and first-person age statements ("I'm 15", "I am 16
years old", "im 14", "as a 13 year old", "I just turned 17"). When several
labels match, the most safety-critical wins (`SEVERITY`): a message that is
both romantic and about self-harm is about self-harm.

A stated age under 18, or an age signal without a number (`minor_cue`: a
school grade or year, a child role in role-play, parents or a bedtime as
the writer's context), together with a sexual or romantic label makes the
message ``minor_sexual``; `content.ContentClassifier` applies that rule after
the prototypes, because the sexual part may be one only the prototypes see.
Patterns stay phrase-level on purpose: a bare "sex" or "kill" appears in
plenty of safe messages ("sex education", "this commute is killing me").

Denials of self-harm ("I would never hurt myself", "I'm not suicidal") are
masked before the self-harm phrases are matched, and alone they make the
message ``safe`` by rule (so confident self-harm prototypes only make it
*unsure*, which asks the judge). Only clear denials are masked: "I don't
want to hurt myself" is what someone fighting an urge says, and a denial
followed by a contrast ("..., but sometimes ...") is not trusted at all.

`declared_age` is stricter than `stated_age`: the age must be the writer's
own, sincerely (not quoted, reported, pretended or "I feel like I'm 15
again"). A stated minor age is enough to block sexual content; only a
declared one may flag the user as a minor for good.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class RuleMatch:
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

    @property
    def minor_signal(self) -> bool:
        """A stated age under 18 or an age signal without a number (`minor_cue`)."""
        return self.minor_cue is not None or (self.age is not None and self.age < ADULT_AGE)


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
    minor = cue is not None or (age is not None and age < ADULT_AGE)
    if label in SEXUAL_LABELS and minor:
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


def severity_rank(label: str) -> int:
    """0 for the most critical label; larger is milder."""
    return SEVERITY.index(label)


def _to_int(token: str) -> int:
    lowered = token.lower()
    return _NUMBER_WORDS[lowered] if lowered in _NUMBER_WORDS else int(lowered)


def _any_match(patterns: tuple[re.Pattern[str], ...], text: str) -> bool:
    return any(pattern.search(text) for pattern in patterns)
