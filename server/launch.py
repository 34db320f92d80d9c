"""What `companion serve` tells its user around start-up.

Before the server starts: whether the address is free, so a taken port is one
sentence naming the flag, not a traceback from deep inside uvicorn. Once
``/health/ready`` answers 200: one line with the web UI's URL, the ``/v1``
base URL for OpenAI clients, and where the data lives.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}  # noqa: S104


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on, as a sentence for the user; None when it can."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # what uvicorn sets too: a port left in TIME_WAIT by a previous run is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} on {host} is already in use (another companion serve?); "
                    f"stop that or pick another port with --port (or COMPANION_PORT)"
                )
            return f"cannot listen on {host}:{port}: {exc.strerror}; change --host or --port"
    return None


def base_url(host: str, port: int) -> str:
    """The URL a browser on this machine reaches the server at."""
    shown = _WILDCARDS.get(host, f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}"


def ready_line(host: str, port: int, data_dir: Path) -> str:
    url = base_url(host, port)
    return f"Companion is ready: web chat {url}/ · OpenAI API base {url}/v1 · data in {data_dir}"


def announce_when_ready(
    host: str,
    port: int,
    data_dir: Path,
    echo: Callable[[str], None],
    *,
    interval_s: float = 0.5,
) -> threading.Thread:
    """Print `ready_line` once ``/health/ready`` first answers 200 (a daemon thread)."""

    def watch() -> None:
        url = f"{base_url(host, port)}/health/ready"
        while True:
            try:  # urllib, not httpx: its client logs every poll at info level
                with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310
                    if answer.status == 200:
                        echo(ready_line(host, port, data_dir))
                        return
            except OSError:
                pass  # not listening yet, or 503 while starting
            time.sleep(interval_s)

    thread = threading.Thread(target=watch, name="announce-ready", daemon=True)
    thread.start()
    return thread
