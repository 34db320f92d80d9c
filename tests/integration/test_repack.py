"""Weight repacking: probed in a child process that may really crash, decided once, cached.

The crash on AMX CPUs cannot happen on every machine the suite runs on, so the
crashing child here is a real process that really dies of SIGSEGV, the same
thing the supervisor of the probe sees on an AMX machine.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import pytest

from inference.engines.llamacpp import repack
from inference.engines.llamacpp.repack import ProbeResult, cached_probe, probe, resolve_repack

SEGFAULT = (sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")


@pytest.fixture(autouse=True)
def forget_answers() -> None:
    repack._probed.clear()  # answers this process already knows (a module-level memo)


def crashing_probe(model: Path) -> ProbeResult:
    return probe(model, command=SEGFAULT)


def no_probe_expected(model: Path) -> ProbeResult:
    raise AssertionError(f"probed {model} again")


def test_a_probe_that_crashes_turns_repacking_off(tiny_gguf: Path) -> None:
    result = probe(tiny_gguf, command=SEGFAULT)
    assert result.repack is False and result.outcome == "killed by SIGSEGV"


def test_the_real_probe_runs_the_model_with_repacking(tiny_gguf: Path) -> None:
    result = probe(tiny_gguf)
    # "ok" on machines where repacking works; an AMX machine may answer a crash
    assert result.outcome == "ok" or result.outcome.startswith("killed by"), result
    assert result.repack is (result.outcome == "ok")


def test_a_model_that_cannot_load_decides_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    assert resolve_repack("auto", missing, tmp_path) is False
    assert cached_probe(missing, tmp_path) is None  # the real load reports the error


def test_auto_probes_once_and_caches_per_model_and_cpu(tiny_gguf: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(tiny_gguf.read_bytes())
    assert resolve_repack("auto", model, tmp_path, crashing_probe) is False
    repack._probed.clear()  # as a new process would: only the file remembers
    assert resolve_repack("auto", model, tmp_path, no_probe_expected) is False
    entry = next(iter(json.loads((tmp_path / repack.CACHE_FILE).read_text()).values()))
    assert entry["outcome"] == "killed by SIGSEGV" and entry["model"] == str(model)
    assert entry["cpu"] == repack.cpu_name()

    os.utime(model, ns=(1, 1))  # another file at that path: probed again
    working = functools.partial(probe, command=(sys.executable, "-c", "pass"))
    assert resolve_repack("auto", model, tmp_path, working) is True
    cached = cached_probe(model, tmp_path)
    assert cached is not None and cached.repack and cached.outcome == "ok"


def test_on_and_off_are_obeyed_without_a_probe(tiny_gguf: Path, tmp_path: Path) -> None:
    assert resolve_repack("on", tiny_gguf, tmp_path, no_probe_expected) is True
    assert resolve_repack("off", tiny_gguf, tmp_path, no_probe_expected) is False
    assert not (tmp_path / repack.CACHE_FILE).exists()
