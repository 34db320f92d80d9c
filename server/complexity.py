"""Message complexity routing: short small talk may go to a smaller, faster model.

A greeting, a thank-you or an "ok" needs no large model, and its reply is
short; answering it on a small model (``COMPANION_CHAT_SMALL_MODEL``) keeps the
large one free for the messages that need it. The test is deliberately
narrow, since a wrong "small" costs quality and a wrong "default" only costs
speed:

- the message was routed normally and classified safe (a crisis, an
  explicit request or anything unsure always goes to the default model);
- it is at most `MAX_WORDS` words and opens with a small-talk phrase.

The turn's ``meta`` event says which tier and model answered. Switching
models costs that turn the KV reuse of the conversation, which small talk,
being short, barely uses.
"""

from __future__ import annotations

import re
from typing import Literal

Tier = Literal["small", "default"]
MAX_WORDS = 6
_SMALL_TALK = re.compile(
    r"(hi|hey|hello|hiya|yo|morning|good (morning|afternoon|evening|night)|gn|night"
    r"|thanks?|thank you|thx|ty|ok(ay)?|k|cool|nice|great|lol|haha+|bye|see (you|ya)"
    r"|how are you|how's it going|what'?s up|sup)\b",
    re.IGNORECASE,
)


def message_tier(text: str, route: str, content_label: str) -> Tier:
    """``small`` for short, safe small talk on the normal route; ``default`` otherwise."""
    if route != "normal" or content_label != "safe":
        return "default"
    stripped = text.strip()
    if len(stripped.split()) > MAX_WORDS or not _SMALL_TALK.match(stripped):
        return "default"
    return "small"
