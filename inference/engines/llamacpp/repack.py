"""Whether llama.cpp may repack weights into its CPU "extra buffer types" here.

With default model parameters llama.cpp copies quantized weights into layouts
made for the CPU's widest kernels (AVX2/AVX-512 interleaved blocks, AMX
tiles). That is faster where it works, but on some machines it does not: on
Intel Xeons with AMX, the AMX path faults (SIGSEGV in ``ggml_backend_amx_mul_mat``)
on the first completion of the packaged Q4_1 model. A fault kills the process
it happens in, so it cannot be caught, only avoided.

``COMPANION_CHAT_REPACK``:

- ``on`` / ``off``: as told;
- ``auto`` (default): `resolve_repack` runs a child process that loads the
  model with repacking and decodes a prompt and a few tokens (the kernels the
  first chat uses). The child exiting cleanly means on; dying means off. The
  answer is cached in ``<data dir>/engines/repack.json``, keyed by the model
  file (path, size, mtime), the CPU (model name and flags) and the llama.cpp
  build, so it is probed again when any of them changes, and is logged and
  shown by ``companion doctor``.

A child that fails for another reason (the file cannot be loaded) decides
nothing: repacking stays off for this start and the real load reports the
error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from inference.engines.exits import exit_text
from inference.machine import cpu_flags, cpu_name, file_identity

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 300.0
CACHE_FILE = "repack.json"
_MODULE = "inference.engines.llamacpp.repack"
_LOAD_FAILED = 3  # the probe's exit status when the model could not be loaded at all

# answers already known to this process (engines started without a cache dir probe once)
_probed: dict[str, ProbeResult] = {}


@dataclass(frozen=True, slots=True)
class ProbeResult:
    repack: bool
    model: str
    cpu: str
    outcome: str  # "ok", "killed by SIGSEGV", "exit 1", "timed out"
    seconds: float
    when: float


def resolve_repack(
    mode: str,
    model_path: Path,
    cache_dir: Path | None,
    run_probe: Callable[[Path], ProbeResult] | None = None,
) -> bool:
    """Whether to repack for ``mode``: probe (once per model, CPU and build) when "auto"."""
    if mode != "auto":
        return mode == "on"
    key = probe_key(model_path)
    cached = _probed.get(key) or cached_probe(model_path, cache_dir, key)
    if cached is not None:
        log.info("llama.cpp repacking %s (probed before: %s)", _word(cached), cached.outcome)
        return cached.repack
    result = (run_probe or probe)(model_path)
    log.info("llama.cpp repacking %s (probe: %s)", _word(result), result.outcome)
    if result.outcome != f"exit {_LOAD_FAILED}":
        _probed[key] = result
        if cache_dir is not None:
            _store(cache_dir, key, result)
    return result.repack


def probe(
    model_path: Path,
    timeout_s: float = PROBE_TIMEOUT_S,
    command: Sequence[str] | None = None,
) -> ProbeResult:
    """Load and run ``model_path`` with repacking in a child process; report how it went.

    ``command`` replaces the child's command line (the model path is appended).
    """
    started = time.monotonic()
    command = [*(command or (sys.executable, "-m", _MODULE)), str(model_path)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
        code = done.returncode
        outcome = "ok" if code == 0 else exit_text(code)
    except subprocess.TimeoutExpired:
        code, outcome = -1, "timed out"
    if code not in (0, _LOAD_FAILED, -1):
        log.warning("llama.cpp repacking fails on this machine (%s): turned off", outcome)
    return ProbeResult(
        repack=code == 0,
        model=str(model_path),
        cpu=cpu_name(),
        outcome=outcome,
        seconds=round(time.monotonic() - started, 2),
        when=time.time(),
    )


def cached_probe(
    model_path: Path, cache_dir: Path | None, key: str | None = None
) -> ProbeResult | None:
    """The probe's cached answer for this model, CPU and build, if there is one."""
    if cache_dir is None:
        return None
    try:
        entries = json.loads((cache_dir / CACHE_FILE).read_text(encoding="utf-8"))
        return ProbeResult(**entries[key or probe_key(model_path)])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def probe_key(model_path: Path) -> str:
    """What the answer depends on: the model file, the CPU and the llama.cpp build."""
    parts = [file_identity(model_path), cpu_name(), cpu_flags(), _build_identity()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _build_identity() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        return "no llama_cpp"
    lib = Path(spec.origin).parent / "lib"
    stamps = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in lib.glob("*.so*"))
    return ",".join(stamps) or spec.origin


def _store(cache_dir: Path, key: str, result: ProbeResult) -> None:
    path = cache_dir / CACHE_FILE
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = {}
        entries[key] = asdict(result)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(json.dumps(entries, indent=1), encoding="utf-8")
        scratch.replace(path)  # atomic: several workers may probe at once
    except OSError as exc:
        log.warning("repack probe result not cached: %s", exc)


def _word(result: ProbeResult) -> str:
    return "on" if result.repack else "off"


def _run_probe(model_path: Path) -> int:
    """The child's work: what the first chat does, with repacking on."""
    from inference.engines.llamacpp.model import BatchItem, ContextShape, LlamaModel
    from inference.errors import EngineUnavailable
    from inference.types import SamplingParams

    shape = ContextShape(n_ctx=256, n_seq_max=1, n_batch=64, n_threads=0)
    try:
        model = LlamaModel(model_path, shape, repack=True)
    except EngineUnavailable:
        return _LOAD_FAILED
    prompt = model.tokenize("Hello! How are you today? Tell me about your day.", add_bos=True)
    prompt = (prompt * 4)[:48]  # a batch wide enough for the matrix-matrix kernels
    last = len(prompt) - 1
    if model.decode([BatchItem(t, i, 0, i == last) for i, t in enumerate(prompt)]) != 0:
        return 1
    sampler = model.new_sampler(SamplingParams(temperature=0), None, None)
    token, position = model.sample(sampler, last), len(prompt)
    for _ in range(4):  # single-token steps: the matrix-vector kernels
        if model.decode([BatchItem(token, position, 0, True)]) != 0:
            return 1
        token, position = model.sample(sampler, 0), position + 1
    model.free_sampler(sampler)
    model.close()
    return 0


if __name__ == "__main__":
    sys.exit(_run_probe(Path(sys.argv[1])))
