"""The Q8_0 copy of Q4_1 weights (inference.engines.llamacpp.weights), made by llama.cpp's
own quantizer on real model files: what is written, when it is reused. That the default
engine loads it: tests/integration/test_engine_process.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from inference.config import q8_0_copy_bytes
from inference.engines.llamacpp.weights import SUBDIR, copy_path, resolve_weights
from models.gguf import read_tensor_types

pytestmark = pytest.mark.timeout(120)

Q4_1, Q8_0 = 3, 8


def test_a_q4_1_model_is_copied_once_to_q8_0_and_the_copy_reused(
    tiny_gguf_q4: Path, tmp_path: Path
) -> None:
    """The tiny model's Q4_1 matrices are outweighed by its Q8_0 embedding (SmolLM2's
    49,152-token vocabulary), so "auto" leaves it (the packaged model, 79% Q4_1, is
    copied: test_engine_process.py); asked for, the copy is made the same way."""
    assert resolve_weights("auto", tiny_gguf_q4, tmp_path / "auto") == tiny_gguf_q4
    source = tmp_path / "model" / "tiny-q4_1.gguf"
    source.parent.mkdir()
    shutil.copy2(tiny_gguf_q4, source)
    state = tmp_path / "engines"
    loaded = resolve_weights("q8_0", source, state)
    assert loaded == copy_path(source, state) and loaded.parent == state / SUBDIR
    before, after = read_tensor_types(source), read_tensor_types(loaded)
    assert before.get(Q4_1) and Q4_1 not in after
    assert sum(n for t, n in after.items() if t != 0) == after[Q8_0]  # every matrix
    assert sum(before.values()) == sum(after.values())  # the same weights
    estimate = q8_0_copy_bytes(before, source.stat().st_size)
    assert abs(loaded.stat().st_size - estimate) < 0.02 * loaded.stat().st_size
    assert not list(loaded.parent.glob("*.tmp"))
    made = loaded.stat().st_mtime_ns
    assert resolve_weights("q8_0", source, state) == loaded
    assert loaded.stat().st_mtime_ns == made  # reused, not written again
    # as asked: the file itself; no state directory: nowhere to keep a copy
    assert resolve_weights("as-is", source, state) == source
    assert resolve_weights("q8_0", source, None) == source
    # a replaced model file gets its own copy, and the old one goes
    os.utime(source, ns=(made + 10**9, made + 10**9))
    again = resolve_weights("q8_0", source, state)
    assert again != loaded and again.exists() and not loaded.exists()


def test_fast_types_are_loaded_as_they_are_unless_asked(
    tiny_gguf_q4_0: Path, tiny_gguf: Path, tmp_path: Path
) -> None:
    assert resolve_weights("auto", tiny_gguf_q4_0, tmp_path) == tiny_gguf_q4_0  # Q4_0
    assert resolve_weights("auto", tiny_gguf, tmp_path) == tiny_gguf  # f32
    assert not (tmp_path / SUBDIR).exists()
    asked = resolve_weights("q8_0", tiny_gguf_q4_0, tmp_path)
    assert asked != tiny_gguf_q4_0 and set(read_tensor_types(asked)) <= {0, Q8_0}


def test_a_file_the_quantizer_cannot_read_is_loaded_as_it_is(
    tiny_gguf_q4: Path, tmp_path: Path
) -> None:
    """The header is whole (so the plan says copy) but the tensor data is cut short: the
    quantizer fails, nothing is left behind, and the engine gets the file to report on."""
    broken = tmp_path / "cut.gguf"
    data = tiny_gguf_q4.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    assert read_tensor_types(broken).get(Q4_1)
    assert resolve_weights("q8_0", broken, tmp_path / "engines") == broken
    assert not list((tmp_path / "engines" / SUBDIR).glob("*"))


def test_a_data_directory_that_cannot_hold_the_copy_leaves_the_file_loaded(
    tiny_gguf_q4: Path, tmp_path: Path
) -> None:
    """A read-only or broken data directory must not stop the engine from starting: here
    the state directory's place is taken by a file, so no folder can be made under it."""
    blocked = tmp_path / "engines"
    blocked.write_text("not a directory", encoding="utf-8")
    assert resolve_weights("q8_0", tiny_gguf_q4, blocked) == tiny_gguf_q4
    assert blocked.read_text(encoding="utf-8") == "not a directory"
