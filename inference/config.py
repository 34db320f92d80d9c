"""Configuration of the inference tier. `server.settings` builds it from the environment.

`ChatEngineConfig` holds what every backend shares (which backend, which
model, how many KV cells and sequences, the deadline, where engines keep what
they learn); each backend's own knobs sit in a nested options struct:
`LlamaCppOptions`, `RemoteOptions`, `VllmOptions`. A backend reads only its
own struct, and `inference.factory` hands it to that backend's engine.

ARCHITECTURE: the defaults written here are the only ones. `server.settings`
reads its defaults from these classes, so a knob (``COMPANION_CHAT_NICE``...)
has its default in one place. ``process`` stays on top although only the
llama.cpp backend runs in an engine process today: it says where an engine
runs, not how it decodes, and the process boundary (`inference.engines.process`)
rewrites it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A companion prompt at full size: persona (~500 tokens), retrieved memories (up to the
# 1,500-token budget), the summary and recent history, and the reply. A slot smaller than
# this would squeeze the history out of every prompt; "auto" then keeps the unified pool.
PER_SLOT_MIN_CELLS = 4096
# COMPANION_CHAT_CTX=0 (the default) sizes the KV cache for the model (`auto_kv_cells`):
# PER_SLOT_MIN_CELLS for every slot when their KV takes at most 1/KV_MEMORY_SHARE of this
# machine's memory, else AUTO_UNIFIED_CELLS in one pool (also vLLM's longest sequence).
AUTO_UNIFIED_CELLS = 8192
KV_MEMORY_SHARE = 8


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    """The llama.cpp engine's own settings (`inference.engines.llamacpp`)."""

    n_threads: int = 0  # 0: every core this process may use
    nice: int = 10  # the decode threads' niceness (Linux): requests are served first
    # The step time to aim for while streams generate: prompt tokens of waiting requests
    # fill what the decodes leave of it (`engines.llamacpp.step_budget`, fitted to this
    # machine's own step times). 0: a fixed prefill_chunk per step instead. 100 ms: of
    # the targets measured (docs/benchmarks.md, "Decode speed: the step-time budget"),
    # the one with the shortest tails that kept first tokens as quick as the fixed chunk.
    itl_target_ms: int = 100
    prefill_chunk: int = 128  # prompt tokens per step before the step times are known
    host_cache_bytes: int = 512 << 20  # KV saved in host RAM for conversations evicted
    repack: str = "auto"  # "auto", "on" or "off" (inference.engines.llamacpp.repack)
    # "auto", "as-is" or "q8_0": load a Q8_0 copy of a model whose weights have no fast
    # CPU kernel (Q4_1, Q5_1), as the packaged one (inference.engines.llamacpp.weights)
    weights: str = "auto"
    # "unified": one pool of n_ctx cells for every sequence (a long conversation may take
    # most of it; a shared persona is stored once), but every decoded token attends over
    # the whole pool in use, idle conversations' cells included. "per_slot": each of the
    # n_slots sequences gets n_ctx/n_slots cells of its own and attends over those only
    # (llama-server's layout); a shared persona is copied, not referenced. "auto": per
    # slot when each slot gets at least PER_SLOT_MIN_CELLS, else unified.
    # docs/inference.md "KV layout" has the measurements.
    kv_layout: str = "auto"

    def per_slot(self, n_ctx: int, n_slots: int) -> bool:
        """Whether ``n_ctx`` cells over ``n_slots`` sequences are laid out per slot."""
        return per_slot_layout(self.kv_layout, n_ctx, n_slots)


def auto_kv_cells(n_slots: int, kv_bytes_per_token: int, memory_bytes: int) -> int:
    """The KV cells of ``COMPANION_CHAT_CTX=0`` for a llama.cpp model whose cache takes
    ``kv_bytes_per_token`` a cell, on a machine with ``memory_bytes``.

    Cells of their own for every slot (the per-slot layout: a decoded token attends over
    its own conversation only, whatever the other slots hold; docs/inference.md "KV
    layout"), as long as that stays within an eighth of the machine: 16 slots of the
    packaged 135M model take 1.5 GB (23 KB a cell), of a 1B model ~2 GB. A larger model
    gets one pool of AUTO_UNIFIED_CELLS instead (an 8B model: 1 GB rather than 8).
    """
    per_slot = n_slots * PER_SLOT_MIN_CELLS
    if per_slot * kv_bytes_per_token <= memory_bytes // KV_MEMORY_SHARE:
        return per_slot
    return AUTO_UNIFIED_CELLS


# ggml type numbers (ggml.h) of the quantizations without a fast CPU kernel in llama.cpp:
# no repacked layout and no llamafile matrix kernel (inference.engines.llamacpp.weights)
SLOW_CPU_TYPES = {3: "Q4_1", 7: "Q5_1"}
_GGML_F32, _GGML_Q8_0 = 0, 8
# bytes a weight of the ggml types a copy is made from or kept in: f32, f16, Q4_0, Q4_1,
# Q5_0, Q5_1, Q8_0 (a Q8_0 block: 32 int8 values and an f16 scale)
_BYTES_PER_WEIGHT = {0: 4, 1: 2, 2: 18 / 32, 3: 20 / 32, 6: 22 / 32, 7: 24 / 32, 8: 34 / 32}


@dataclass(frozen=True, slots=True)
class WeightsPlan:
    """Whether the llama.cpp engine loads a Q8_0 copy of the model, and why (logged);
    ``load_bytes``: about the bytes of weights it loads then (the file's or the copy's)."""

    copy: bool
    reason: str
    load_bytes: int


def plan_weights(
    mode: str, types: dict[int, int], file_bytes: int, memory_bytes: int
) -> WeightsPlan:
    """``COMPANION_CHAT_WEIGHTS`` ("auto", "as-is", "q8_0") decided for a model whose
    weights are ``types`` (ggml type -> count), in a file of ``file_bytes``, on a machine
    with ``memory_bytes``: "auto" copies when most quantized weights are of a slow type
    and the copy's extra memory stays within the KV cache's share of the machine."""
    copied = q8_0_copy_bytes(types, file_bytes)
    if mode == "as-is":
        return WeightsPlan(False, "COMPANION_CHAT_WEIGHTS=as-is", file_bytes)
    if mode == "q8_0":
        return WeightsPlan(True, "COMPANION_CHAT_WEIGHTS=q8_0", copied)
    quantized = sum(n for kind, n in types.items() if kind != _GGML_F32)
    slow = {SLOW_CPU_TYPES[k]: n for k, n in types.items() if k in SLOW_CPU_TYPES}
    if not quantized or sum(slow.values()) * 2 <= quantized:
        return WeightsPlan(False, "its weights have fast CPU kernels", file_bytes)
    names = "/".join(sorted(slow))
    if copied - file_bytes > memory_bytes // KV_MEMORY_SHARE:
        return WeightsPlan(
            False,
            f"{names}, but a Q8_0 copy would take {(copied - file_bytes) >> 20} MiB more"
            f" memory, over 1/{KV_MEMORY_SHARE} of this machine's",
            file_bytes,
        )
    return WeightsPlan(True, f"{names} has no fast CPU kernel here; Q8_0 has", copied)


def q8_0_copy_bytes(types: dict[int, int], file_bytes: int) -> int:
    """About the size of a Q8_0 copy of a file of ``file_bytes``: the same header (the
    vocabulary), every weight matrix in Q8_0, f32 norms kept (other types: as large)."""
    q8_0 = _BYTES_PER_WEIGHT[_GGML_Q8_0]
    grows = sum(
        n * (q8_0 - _BYTES_PER_WEIGHT.get(kind, q8_0))
        for kind, n in types.items()
        if kind != _GGML_F32
    )
    return file_bytes + int(grows)


def per_slot_layout(kv_layout: str, n_ctx: int, n_slots: int) -> bool:
    """``kv_layout`` ("auto", "unified", "per_slot") decided for ``n_ctx`` cells over
    ``n_slots`` sequences: True when each sequence gets cells of its own."""
    if kv_layout == "auto":
        return n_ctx // n_slots >= PER_SLOT_MIN_CELLS
    return kv_layout == "per_slot"


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """The remote engine's own settings (`inference.engines.remote`)."""

    base_urls: tuple[str, ...] = ()  # the replicas' OpenAI base URLs
    upstream_model: str = ""  # the model name upstream (default: model_id)
    api_key: str | None = None
    flavor: str = "openai"  # or "vllm": send cache_salt and priority
    # refuse (EngineOverloaded) when every replica's KV usage is at least this and more
    # than max_waiting requests wait there (from the replicas' /metrics)
    kv_full: float = 0.98
    max_waiting: int = 8


@dataclass(frozen=True, slots=True)
class VllmOptions:
    """The vLLM engine's own settings (`inference.engines.vllm`)."""

    # KV cache memory on a CPU host (0: vLLM's default). On a GPU the cache takes what
    # gpu_memory_utilization leaves after the weights.
    kv_cache_mb: int = 1024
    gpu_memory_utilization: float = 0.85
    dtype: str = "auto"  # the model's own (bfloat16 for the converted packaged model)
    # skip torch.compile: starts in ~40 s instead of ~90 s on 2 cores, and decoded as fast
    # on the packaged model (docs/inference.md)
    eager: bool = True
    # "user": prefix caches never cross users (cache_salt); "shared": one cache for all
    cache_scope: str = "user"


@dataclass(frozen=True, slots=True)
class ChatEngineConfig:
    """Which chat engine to run and how big.

    ``backend`` "llamacpp" runs the model at ``model_path`` (None: the packaged
    default, SmolLM2-135M-Instruct) in an engine process; "vllm" runs it on vLLM
    (``model_path`` a Hugging Face directory or a GGUF to convert); "none" runs no engine (the API
    then answers chat requests with 503); "remote" forwards to OpenAI-compatible
    upstream replicas (``remote.base_urls``). ``n_ctx`` KV cells are shared by
    ``n_slots`` sequences: running requests plus conversations kept for reuse; 0 sizes
    them for the model (llama.cpp: `auto_kv_cells`, by the factory; vLLM: the longest
    sequence is AUTO_UNIFIED_CELLS, its cache ``vllm.kv_cache_mb``).
    """

    # "llamacpp", "vllm", "auto" (the faster of the two: inference.engine_choice), "remote", "none"
    backend: str = "llamacpp"
    model_path: Path | None = None
    model_id: str = "smollm2-135m-instruct"
    n_ctx: int = 0  # 0: sized for the model (see above)
    n_slots: int = 16
    max_waiting: int = 256
    # "separate" runs the engine in a process of its own (inference.engines.process),
    # "inline" in this one (tests of the engine itself; measuring what the boundary costs)
    process: str = "separate"
    state_dir: Path | None = None  # where engines keep what they learn about this machine
    # seconds a request may take from submission, when it sets no deadline of its own
    # (chat turns, /v1): past it the engine ends it; 0: none
    deadline_s: float = 600.0
    llamacpp: LlamaCppOptions = LlamaCppOptions()
    remote: RemoteOptions = RemoteOptions()
    vllm: VllmOptions = VllmOptions()

    @property
    def max_model_len(self) -> int:
        """The longest sequence (prompt and reply) a vLLM engine of this config takes."""
        return self.n_ctx or AUTO_UNIFIED_CELLS

    def deadline_for(self, requested_s: float | None) -> float | None:
        """A request's deadline: the one it set, else ``deadline_s`` (0: none)."""
        return requested_s if requested_s is not None else (self.deadline_s or None)

    def with_llamacpp(self, **changes: Any) -> ChatEngineConfig:
        """This configuration with some `LlamaCppOptions` changed."""
        return dataclasses.replace(self, llamacpp=dataclasses.replace(self.llamacpp, **changes))
