"""One SSE reader for every test that reads a whole streamed body (tests/ is on sys.path:
pytest puts the folder of each conftest.py there)."""

from __future__ import annotations

import json


def sse_events(body: str) -> list[tuple[str, dict[str, object]]]:
    """The (event, data) pairs of an SSE body; comment-only blocks (keep-alives) are skipped."""
    events = []
    for block in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events
