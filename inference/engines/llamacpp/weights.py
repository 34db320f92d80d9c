"""Which weights the llama.cpp engine loads: the model file as it is, or a Q8_0 copy of it.

llama.cpp's CPU kernels are not equally fast for every quantization. Q4_1 and Q5_1
(blocks with a scale *and* a minimum) have no repacked layout and no llamafile
matrix-matrix kernel, so every batch goes through the generic dot product. On the
development machine (AMD EPYC, AVX-512, 2 threads; `scripts/bench_weights.py`,
docs/inference.md "Weights") the packaged SmolLM2 Q4_1 decoded eight streams in 54 ms
a step where the same weights as Q8_0 took 45, a step carrying a 16-token prompt chunk
122 against 89 ms, a 128-token prompt 712 against 418; one stream 11.5 against 10.7.
Q8_0 holds every Q4_1 weight to within half a step of 1/127 of its block's largest
value, so the copy is the same model for practical purposes: perplexity on LoCoMo
dialogue 11.854 (Q4_1) against 11.871 (the copy), where a Q4_0 copy, faster still,
loses 21% (14.380) and is not offered.

``COMPANION_CHAT_WEIGHTS``:

- ``as-is``: load the file;
- ``q8_0``: load a Q8_0 copy whatever the file's types;
- ``auto`` (default): the copy when most of the model's weights are of a slow type
  (`inference.config.SLOW_CPU_TYPES`) and the copy costs at most an eighth of the
  machine's memory more than the file (the share the KV cache may take;
  `inference.config.plan_weights`), with room for it on disk; else the file.

The copy is made once by llama.cpp's own quantizer (``llama_model_quantize``, which
widens each block back to floats and quantizes it again) into
``<state dir>/weights/``, named after the model file's path, size and modification
time, so a replaced model gets a new copy and the stale one is removed. It is written
under a temporary name and renamed, so several engines starting at once never load a
half-written file. Without a state directory (an engine started by hand) there is
nowhere to keep it, and the file is loaded as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import hashlib
import logging
import os
import shutil
import time
from pathlib import Path

import llama_cpp

from inference.config import WeightsPlan
from inference.engines.llamacpp.model import quiet_logs
from inference.factory import plan_model_weights
from inference.machine import file_identity

log = logging.getLogger(__name__)

DISK_MARGIN_BYTES = 256 << 20  # what the copy must leave free on the data disk
SUBDIR = "weights"


def planned_copy(
    mode: str, model_path: Path, state_dir: Path | None
) -> tuple[Path | None, WeightsPlan]:
    """Where the Q8_0 copy an engine of ``mode`` loads is (it may not be made yet), or
    None for the file itself; and the plan (why, for the log and `companion doctor`)."""
    plan = plan_model_weights(mode, model_path)
    if not plan.copy:
        return None, plan
    if state_dir is None:
        size = model_path.stat().st_size  # read by the plan just now
        return None, WeightsPlan(False, "no state directory to keep a copy in", size)
    return copy_path(model_path, state_dir), plan


def resolve_weights(mode: str, model_path: Path, state_dir: Path | None) -> Path:
    """The file to load for ``mode``: ``model_path`` or its Q8_0 copy (made if missing)."""
    target, plan = planned_copy(mode, model_path, state_dir)
    reason = plan.reason
    if target is None:
        log.info("llama.cpp weights: %s as it is (%s)", model_path.name, reason)
        return model_path
    if target.exists():
        log.info("llama.cpp weights: the Q8_0 copy of %s (%s)", model_path.name, reason)
        return target
    free = shutil.disk_usage(_existing_parent(target)).free
    if free < plan.load_bytes + DISK_MARGIN_BYTES:
        log.warning(
            "llama.cpp weights: %s as it is: no room for a Q8_0 copy (%d MiB free)",
            model_path.name,
            free >> 20,
        )
        return model_path
    started = time.monotonic()
    if not make_copy(model_path, target):
        return model_path
    log.info(
        "llama.cpp weights: made a Q8_0 copy of %s in %.1f s (%s)",
        model_path.name,
        time.monotonic() - started,
        reason,
    )
    _remove_stale(model_path, target)
    return target


def copy_path(model_path: Path, state_dir: Path) -> Path:
    """Where the Q8_0 copy of this exact model file (path, size, mtime) lives."""
    key = hashlib.sha256(file_identity(model_path).encode()).hexdigest()[:16]
    return state_dir / SUBDIR / f"{model_path.stem}.{key}.q8_0.gguf"


def make_copy(source: Path, target: Path) -> bool:
    """Quantize ``source`` to Q8_0 at ``target`` (atomically); False (logged) on failure."""
    quiet_logs()  # the quantizer logs a line per tensor
    scratch = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the source is quantized: widen, then quantize
    params.nthread = 0  # every core
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        status = llama_cpp.llama_model_quantize(
            str(source).encode(), str(scratch).encode(), ctypes.byref(params)
        )
        if status != 0:
            log.warning("llama.cpp weights: the Q8_0 copy failed (status %d)", status)
            return False
        scratch.replace(target)
        return True
    except OSError as exc:  # a read-only or full data directory: serve the file instead
        log.warning("llama.cpp weights: no Q8_0 copy: %s", exc)
        return False
    finally:
        with contextlib.suppress(OSError):
            scratch.unlink(missing_ok=True)


def _remove_stale(model_path: Path, current: Path) -> None:
    """Copies of earlier versions of the same model file (its name, another key)."""
    for old in current.parent.glob(f"{glob.escape(model_path.stem)}.*.q8_0.gguf"):
        key = old.name[len(model_path.stem) + 1 : -len(".q8_0.gguf")]
        if old != current and len(key) == 16 and all(c in "0123456789abcdef" for c in key):
            with contextlib.suppress(OSError):  # another process's to remove, or read-only
                old.unlink(missing_ok=True)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path
