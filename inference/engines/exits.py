"""How a child process ended, in words (engine processes and the repack probe)."""

from __future__ import annotations

import signal


def exit_text(code: int | None) -> str:
    """``returncode`` as a reader wants it: "exit 1", "killed by SIGSEGV", "still running"."""
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"
