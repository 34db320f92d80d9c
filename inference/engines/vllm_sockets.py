"""Where vLLM's processes put the files of their ZeroMQ sockets: a directory of ours.

vLLM's front end and engine core talk over ZeroMQ ``ipc://`` sockets, each a file
named by a fresh uuid in ``VLLM_RPC_BASE_PATH`` (by default the temporary directory,
``/tmp``), and it leaves them there when it shuts down: seven files for one
``companion serve`` on vLLM with its engine-choice probe, about forty for one run of
the test suite, measured on this project's development machine (2026-12-05). Over
months of restarts that is thousands of stray files in ``/tmp``.

So each process that runs a vLLM engine points ``VLLM_RPC_BASE_PATH`` at a directory
of its own (``<tmp>/companion-vllm-XXXX``, short: a socket's path must fit in 108
bytes), set before the first engine starts and never changed after (vLLM caches its
environment once an engine is up). When the last engine of the process closes, the
files left in it are removed, and at exit the directory itself. A process killed
outright leaves one directory instead of its files scattered.

An operator's own ``VLLM_RPC_BASE_PATH`` is kept. One inherited from a parent
companion process (an engine process, the engine-choice probe) is not: the parent
removes its files when its own engines close, so each process takes its own, told
apart by ``COMPANION_VLLM_RPC_PID``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

BASE_ENV = "VLLM_RPC_BASE_PATH"
OWNER_ENV = "COMPANION_VLLM_RPC_PID"

_directory: Path | None = None
_engines = 0


def claim() -> Path | None:
    """An engine is starting: the directory its sockets go to (None: the operator's)."""
    global _directory, _engines
    _engines += 1
    if _directory is None:
        inherited = os.environ.get(OWNER_ENV) not in (None, str(os.getpid()))
        if os.environ.get(BASE_ENV) and not inherited:
            return None  # set by the operator
        _directory = Path(tempfile.mkdtemp(prefix="companion-vllm-"))
        os.environ[BASE_ENV] = str(_directory)
        os.environ[OWNER_ENV] = str(os.getpid())
        atexit.register(shutil.rmtree, _directory, True)
    return _directory


def release() -> None:
    """An engine has shut down; with none left, remove the files vLLM left behind."""
    global _engines
    _engines = max(0, _engines - 1)
    if _engines or _directory is None or not _directory.is_dir():
        return
    for leftover in _directory.iterdir():
        with contextlib.suppress(OSError):
            leftover.unlink()
