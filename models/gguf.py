"""Reading a GGUF file's header: the hyper-parameters that size a model in memory.

Only the metadata key/value section and the tensor table that follows it are
parsed (little-endian GGUF v2/v3); tensor data is never read, so this costs a few
milliseconds even for large files. Array values (the tokenizer's vocabulary) are
skipped, not kept.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

_MAGIC = b"GGUF"
# GGUF value types -> struct format of a scalar of that type
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


class GGUFError(Exception):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True, slots=True)
class GGUFShape:
    """What decides a llama-style model's KV cache size."""

    architecture: str
    n_layer: int
    n_head_kv: int
    key_length: int  # per head
    value_length: int  # per head
    context_length: int | None

    def kv_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        """K and V of one token over all layers (f16 cache: 2 bytes a value)."""
        per_layer = self.n_head_kv * (self.key_length + self.value_length)
        return self.n_layer * per_layer * bytes_per_value


def read_metadata(path: Path) -> dict[str, object]:
    """Every scalar and string metadata value of the GGUF file at ``path``."""
    with path.open("rb") as handle:
        metadata, _tensors = _read_metadata(handle, path)
        return metadata


def read_tensor_types(path: Path) -> dict[int, int]:
    """How many weights of each ggml type (its number: 2 Q4_0, 3 Q4_1, 8 Q8_0...) the
    GGUF file at ``path`` holds, from its tensor table."""
    with path.open("rb") as handle:
        _metadata, tensors = _read_metadata(handle, path)
        counts: dict[int, int] = {}
        for _ in range(tensors):
            _string(handle)  # the tensor's name
            (n_dims,) = struct.unpack("<I", _read(handle, 4))
            elements = 1
            for dim in struct.unpack(f"<{n_dims}Q", _read(handle, 8 * n_dims)):
                elements *= dim
            kind, _offset = struct.unpack("<IQ", _read(handle, 12))
            counts[kind] = counts.get(kind, 0) + elements
        return counts


def _read_metadata(handle: BinaryIO, path: Path) -> tuple[dict[str, object], int]:
    """The metadata, and the number of tensors in the table that follows it."""
    if handle.read(4) != _MAGIC:
        raise GGUFError(f"{path} is not a GGUF file")
    version, tensors, count = struct.unpack("<IQQ", _read(handle, 20))
    if version < 2:
        raise GGUFError(f"{path}: GGUF version {version} is not supported")
    metadata: dict[str, object] = {}
    for _ in range(count):
        key = _string(handle)
        (kind,) = struct.unpack("<I", _read(handle, 4))
        value = _value(handle, kind)
        if value is not None:
            metadata[key] = value
    return metadata, tensors


def read_shape(path: Path) -> GGUFShape:
    """The KV-relevant hyper-parameters of a (llama-style) GGUF model."""
    meta = read_metadata(path)
    arch = str(meta.get("general.architecture", "llama"))

    def number(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if not isinstance(value, int):
            raise GGUFError(f"{path}: no {arch}.{key} in the metadata")
        return value

    n_head = number("attention.head_count")
    head_dim = number("embedding_length") // max(1, n_head)
    context = meta.get(f"{arch}.context_length")
    return GGUFShape(
        architecture=arch,
        n_layer=number("block_count"),
        n_head_kv=number("attention.head_count_kv", n_head),
        key_length=number("attention.key_length", head_dim),
        value_length=number("attention.value_length", head_dim),
        context_length=context if isinstance(context, int) else None,
    )


def _read(handle: BinaryIO, size: int) -> bytes:
    data = handle.read(size)
    if len(data) != size:
        raise GGUFError("truncated GGUF header")
    return data


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(handle, 8))
    return _read(handle, length).decode("utf-8", errors="replace")


def _value(handle: BinaryIO, kind: int) -> object:
    if kind in _SCALARS:
        fmt = _SCALARS[kind]
        return struct.unpack(fmt, _read(handle, struct.calcsize(fmt)))[0]
    if kind == _STRING:
        return _string(handle)
    if kind == _ARRAY:
        item_kind, length = struct.unpack("<IQ", _read(handle, 12))
        _skip_array(handle, item_kind, length)
        return None
    raise GGUFError(f"unknown GGUF value type {kind}")


def _skip_array(handle: BinaryIO, kind: int, length: int) -> None:
    if kind in _SCALARS:
        handle.seek(struct.calcsize(_SCALARS[kind]) * length, 1)
        return
    for _ in range(length):
        _value(handle, kind)
