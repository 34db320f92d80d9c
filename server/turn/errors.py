"""Why a turn is refused before it starts (the HTTP edge maps them to 400 and 409)."""

from __future__ import annotations


class UnknownPersona(ValueError):
    """A persona that does not exist or cannot be chosen."""


class NothingToAnswer(ValueError):
    """Regenerate asked of a conversation without a user message."""


class NotLastMessage(ValueError):
    """An edit of a message that is not the user's last one in the conversation."""
