"""How llama-cpp-python is built for the image and for a local install (issue 21).

The image must never compile llama.cpp's CPU kernels for its build host; the local
install builds the same way when asked, outside pip's wheel cache.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from inference.engines.llamacpp.backends import CpuBackend, variant_dir

ROOT = Path(__file__).resolve().parents[2]
PORTABLE = "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON"


def test_the_image_builds_every_cpu_variant_from_source() -> None:
    text = (ROOT / "Containerfile").read_text(encoding="utf-8")
    build = text[text.index('RUN if [ "$VARIANT" = cuda ]') :].split("\n\n", 1)[0]
    cpu_branch = build.split("else", 1)[1].split("fi", 1)[0]
    assert f'CMAKE_ARGS="{PORTABLE}"' in cpu_branch
    assert "--no-binary llama-cpp-python" in build  # never a wheel built elsewhere
    commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("GGML_NATIVE=ON" in line for line in commands)


def test_the_local_install_builds_the_same_way_outside_the_wheel_cache() -> None:
    text = (ROOT / "scripts" / "install").read_text(encoding="utf-8")
    assert f'portable_cmake_args="{PORTABLE}"' in text
    portable = re.search(r'CMAKE_ARGS="\$portable_cmake_args[^\n]*', text)
    assert portable is not None and "--no-cache-dir" in portable.group(0)
    assert "--no-binary llama-cpp-python" in text
    assert 'echo "llama-cpp-python $llama_build"' in text  # the stamp knows the build kind


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_variants_are_found_in_the_package_or_where_ggml_installs_them(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    lib = site / "llama_cpp" / "lib"
    _touch(lib / "libggml-cpu.so")
    assert variant_dir(lib) is None  # a native build: one CPU backend, no variants

    _touch(site / "bin" / "libggml-cpu-haswell.so")
    assert variant_dir(lib) == site / "bin"  # llama-cpp-python 0.3.36's wheel layout

    _touch(lib / "libggml-cpu-zen4.so")
    assert variant_dir(lib) == lib  # next to libggml first


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (
            CpuBackend("portable", "zen4", "/x/libggml-cpu-zen4.so", ("AVX2", "AVX512"), ("x64",)),
            "zen4 (portable build, the best of 1 CPU variants here; AVX2 AVX512)",
        ),
        (
            CpuBackend("native", None, "/x/libggml-cpu.so", ("AVX2",)),
            "native build (compiled for the build host's CPU; AVX2)",
        ),
        (
            CpuBackend("unknown", None, None, ()),
            "not known (libggml's backend registry could not be read here)",
        ),
    ],
)
def test_the_log_line_names_the_variant_or_the_native_build(
    backend: CpuBackend, expected: str
) -> None:
    assert backend.describe() == expected
