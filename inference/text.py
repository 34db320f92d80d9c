"""Streaming text out of token pieces: whole UTF-8 characters only, stop strings cut exactly.

A token's bytes can end in the middle of a multi-byte character (emoji, CJK);
`TextStream` holds such bytes back until the character is complete. Text that
might be the start of a stop string is held back too, until it is clear
either way, so a client never sees part of a stop string.

NUL characters are dropped: a model can emit one (a byte-fallback token for
0x00; the tiny test model does now and then), it means nothing in a chat
reply, and PostgreSQL refuses to store text that holds one, which failed the
whole turn after the reply had streamed.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    """Feed token bytes in; get back text that is safe to send, and whether a stop string hit."""

    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = tuple(s for s in stop if s)
        self._text = ""
        self._sent = 0
        self.stopped = False

    @property
    def text(self) -> str:
        """Everything sent so far."""
        return self._text[: self._sent]

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; return the new text that may be sent now."""
        if self.stopped:
            return ""
        self._text += without_nul(self._decoder.decode(piece))
        cut = self._find_stop()
        if cut is not None:
            self.stopped = True
            return self._send_until(cut)
        return self._send_until(len(self._text) - self._held_back())

    def flush(self) -> str:
        """The end of the stream: send what was held back (a partial stop string is just text)."""
        if self.stopped:
            return ""
        self._text += without_nul(self._decoder.decode(b"", final=True))
        return self._send_until(len(self._text))

    def _find_stop(self) -> int | None:
        hits = [self._text.find(s, max(0, self._sent - len(s) + 1)) for s in self._stop]
        found = [h for h in hits if h >= 0]
        return min(found) if found else None

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self._text[self._sent :]
        longest = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(tail)), longest, -1):
                if stop.startswith(tail[-n:]):
                    longest = n
                    break
        return longest

    def _send_until(self, end: int) -> str:
        chunk = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        if self.stopped:
            self._text = self._text[: self._sent]
        return chunk


def without_nul(text: str) -> str:
    """``text`` without NUL characters (see the module docstring); every engine's output
    goes through this."""
    return text.replace("\x00", "") if "\x00" in text else text
