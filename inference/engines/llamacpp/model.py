"""A thin, typed layer over llama-cpp-python's low-level API (its ctypes bindings).

It owns the model, one context with a unified KV cache shared by up to
``n_seq_max`` sequences, and one reusable batch. Everything here runs on the
engine's decode thread, except tokenization and prompt rendering, which only
read the vocabulary and are safe from any thread.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_cpp.llama_grammar import json_schema_to_gbnf

from inference.engines.llamacpp.backends import load_cpu_backend
from inference.errors import EngineUnavailable, InvalidRequest
from inference.types import ChatMessage, SamplingParams

log = logging.getLogger(__name__)

_backend_ready = False


@dataclass(frozen=True, slots=True)
class ContextShape:
    n_ctx: int  # KV cells shared by all sequences
    n_seq_max: int
    n_batch: int
    n_threads: int
    kv_unified: bool = True


@dataclass(frozen=True, slots=True)
class BatchItem:
    token: int
    pos: int
    seq: int
    logits: bool


class LlamaModel:
    """One loaded GGUF model with its context, vocabulary and chat template."""

    def __init__(self, path: Path, shape: ContextShape, *, repack: bool = True) -> None:
        global _backend_ready
        quiet_logs()
        if not _backend_ready:
            # portable builds: the CPU variant for this machine (a native build: no-op)
            load_cpu_backend()
            llama_cpp.llama_backend_init()
            _backend_ready = True
        self.path = path
        self.shape = shape
        self._model = self._load_model(path, repack)
        self._ctx = self._new_context(shape)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(shape.n_batch, 0, 1)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.chat_template = self.metadata("tokenizer.chat_template")
        self._bos = self._piece_text(llama_cpp.llama_vocab_bos(self._vocab))
        self._eos = self._piece_text(llama_cpp.llama_vocab_eos(self._vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._formatters: dict[bool, Jinja2ChatFormatter] = {}

    def close(self) -> None:
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None

    # --- vocabulary and prompts (any thread)

    def metadata(self, key: str) -> str | None:
        size = 1 << 16
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
        if n < 0:
            return None
        if n >= size:
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, n + 1)
        return buf.value.decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_bos, True)
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), tokens, capacity, add_bos, True
            )
        return list(tokens[:n])

    def render_chat(self, messages: Sequence[ChatMessage], *, generation_prompt: bool) -> str:
        if not self.chat_template:
            raise InvalidRequest("this model has no chat template; send prompt tokens instead")
        formatter = self._formatters.get(generation_prompt)
        if formatter is None:  # compiling the template costs milliseconds: once per model
            formatter = Jinja2ChatFormatter(
                self.chat_template, self._eos, self._bos, add_generation_prompt=generation_prompt
            )
            self._formatters[generation_prompt] = formatter
        plain: list[Any] = [{"role": m.role, "content": m.content} for m in messages]
        rendered = formatter(messages=plain)
        return str(rendered.prompt)

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as nothing)."""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def _piece_text(self, token: int) -> str:
        if token < 0:
            return ""
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
        return buf.raw[: max(n, 0)].decode("utf-8", errors="replace")

    # --- sampling

    def new_sampler(
        self, sampling: SamplingParams, grammar: str | None, json_schema: dict[str, Any] | None
    ) -> Any:
        """A sampler chain for one request (free it with `free_sampler`)."""
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        gbnf = grammar if grammar is not None else _schema_grammar(json_schema)
        parts = [_penalties(self.n_vocab, sampling)] if _has_penalties(sampling) else []
        if gbnf is not None:
            parts.append(self._grammar_sampler(gbnf))
        parts.extend(_selection(sampling))
        for part in parts:
            llama_cpp.llama_sampler_chain_add(chain, part)
        return chain

    def _grammar_sampler(self, gbnf: str) -> Any:
        sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode(), b"root")
        if not sampler:
            raise InvalidRequest("the grammar could not be parsed")
        return sampler

    def sample(self, sampler: Any, batch_index: int) -> int:
        """Sample from the logits of batch position ``batch_index`` (and accept the token)."""
        return int(llama_cpp.llama_sampler_sample(sampler, self._ctx, batch_index))

    def logits(self, batch_index: int) -> list[float]:
        """The logits of batch position ``batch_index`` of the last decode (it asked for them)."""
        row = llama_cpp.llama_get_logits_ith(self._ctx, batch_index)
        return list(row[: self.n_vocab])

    @staticmethod
    def free_sampler(sampler: Any) -> None:
        llama_cpp.llama_sampler_free(sampler)

    # --- decoding and KV (decode thread only)

    def decode(self, items: Sequence[BatchItem]) -> int:
        """Decode one batch; 0 on success, 1 when the KV cache has no room (see llama.h)."""
        batch = self._batch
        for i, item in enumerate(items):
            batch.token[i] = item.token
            batch.pos[i] = item.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = item.seq
            batch.logits[i] = item.logits
        batch.n_tokens = len(items)
        return int(llama_cpp.llama_decode(self._ctx, batch))

    def seq_truncate(self, seq: int, keep: int) -> None:
        llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)

    def seq_share_prefix(self, src: int, dst: int, n: int) -> None:
        if self.shape.kv_unified:  # the cells get a second owner: nothing is copied
            llama_cpp.llama_memory_seq_cp(self._memory, src, dst, 0, n)
            return
        # One stream per sequence: llama.cpp copies only whole streams, and only at the
        # next decode, after whatever this step still writes into the donor's stream (a
        # restore, another user's prompt). A copy through the host is taken now; the
        # donor's tokens past the shared prefix are dropped before anything reads them.
        if not self.seq_restore(dst, self.seq_save(src)):
            raise EngineUnavailable(f"could not copy sequence {src}'s prefix")
        llama_cpp.llama_memory_seq_rm(self._memory, dst, n, -1)

    def seq_save(self, seq: int) -> bytes:
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        n = llama_cpp.llama_state_seq_get_data(self._ctx, buf, size, seq)
        return ctypes.string_at(buf, n)

    def seq_restore(self, seq: int, state: bytes) -> bool:
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return bool(llama_cpp.llama_state_seq_set_data(self._ctx, buf, len(state), seq))

    def _load_model(self, path: Path, repack: bool) -> Any:
        params = llama_cpp.llama_model_default_params()
        # repacking into the CPU's "extra buffer types" faults on some CPUs
        # (inference.engines.llamacpp.repack decides)
        params.use_extra_bufts = repack
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise EngineUnavailable(f"could not load model {path}")
        return model

    def _new_context(self, shape: ContextShape) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = shape.n_ctx
        params.n_batch = shape.n_batch
        params.n_ubatch = shape.n_batch
        params.n_seq_max = shape.n_seq_max
        params.n_threads = params.n_threads_batch = shape.n_threads or default_threads()
        # one pool of cells (shared prefixes stored once), or one stream per sequence
        params.kv_unified = shape.kv_unified
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise EngineUnavailable(f"could not create a context of {shape.n_ctx} cells")
        return ctx


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def lower_priority(nice: int) -> None:
    """Give this thread, and the compute threads llama.cpp starts from it, niceness ``nice``.

    Linux keeps a niceness per thread and new threads inherit their creator's, so the
    OpenMP team the first decode creates runs at it too. Elsewhere a "process" priority
    would renice the whole service: left alone. Never raises priority (no privilege).
    """
    if nice <= 0 or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:
        log.warning("decode thread priority unchanged", extra={"error": str(exc)})


def _schema_grammar(schema: dict[str, Any] | None) -> str | None:
    if schema is None:
        return None
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter raises plain exceptions on bad schemas
        raise InvalidRequest(f"unsupported JSON schema: {exc}") from exc


def _has_penalties(s: SamplingParams) -> bool:
    return s.repetition_penalty != 1.0 or s.presence_penalty != 0 or s.frequency_penalty != 0


def _penalties(n_vocab: int, s: SamplingParams) -> Any:
    return llama_cpp.llama_sampler_init_penalties(
        n_vocab, 64, s.repetition_penalty, s.frequency_penalty, s.presence_penalty
    )


def _selection(s: SamplingParams) -> list[Any]:
    if s.temperature == 0:
        return [llama_cpp.llama_sampler_init_greedy()]
    parts = []
    if s.top_k > 0:
        parts.append(llama_cpp.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        parts.append(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0:
        parts.append(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
    parts.append(llama_cpp.llama_sampler_init_temp(s.temperature))
    seed = s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
    parts.append(llama_cpp.llama_sampler_init_dist(seed))
    return parts


def quiet_logs() -> None:
    """From now on llama.cpp writes only its errors to stderr."""
    llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _silent_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """llama.cpp logs every load and context detail to stderr; keep only errors."""
    if level == 4:  # GGML_LOG_LEVEL_ERROR
        os.write(2, text)
