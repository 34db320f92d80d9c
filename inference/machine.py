"""What an engine's measured answers depend on: this CPU, and the exact model file.

Cached probe results (weight repacking, the engine choice) are keyed by these, so a
venv or data directory moved to another machine, or a replaced model, is measured
again instead of trusted.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_name() -> str:
    return _cpuinfo_field("model name") or os.uname().machine


def cpu_flags() -> str:
    return _cpuinfo_field("flags") or _cpuinfo_field("Features") or ""


def machine_memory() -> int:
    """Bytes of memory this machine has."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def file_identity(path: Path) -> str:
    """The resolved path, size and modification time (the path alone if it is gone)."""
    try:
        stat = path.resolve().stat()
    except OSError:
        return str(path)
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None
