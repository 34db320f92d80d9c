"""One SSE reader for every test that reads a streamed body, whole or while it streams
(tests/ is on sys.path: pytest puts the folder of each conftest.py there)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator


def sse_events(body: str) -> list[tuple[str, dict[str, object]]]:
    """The (event, data) pairs of an SSE body; comment-only blocks (keep-alives) are skipped."""
    return list(iter_sse_events(body.splitlines()))


def iter_sse_events(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, object]]]:
    """(event, data) as each named event's block ends, for a test that acts mid-stream
    (``response.iter_lines()``); blocks without an event name are skipped."""
    fields: dict[str, str] = {}
    for line in lines:
        if line:
            name, sep, value = line.partition(": ")
            if sep:
                fields[name] = value
            continue
        yield from _event(fields)
        fields = {}
    yield from _event(fields)  # a body that does not end with a blank line


def _event(fields: dict[str, str]) -> Iterator[tuple[str, dict[str, object]]]:
    if "event" in fields:
        yield fields["event"], json.loads(fields["data"])
