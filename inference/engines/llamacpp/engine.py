"""The llama.cpp engine: continuous batching over one model, KV reuse per conversation.

One decode thread owns the model. Each step it (1) drops cancelled and late
requests, (2) admits waiting requests in the scheduler's order while their KV
need fits, placing each on a sequence whose cached tokens it can reuse
(`inference.kv_placement.KVPlacement`), and (3) decodes one batch that holds the
next token of every generating sequence plus chunks of prompts still being
prefilled (`batch.build_batch`), as many prompt tokens as fit a target step time
(`step_budget`), so running streams keep flowing while a long prompt is computed.

Finished sequences stay in their slot as cache: the conversation's next turn
starts from them. When a slot or cells are needed, the least recently used
idle sequence is saved to a bounded host-RAM cache (its KV bytes) and
restored, not recomputed, when its conversation returns.

Asyncio callers talk to the thread through a lock-protected scheduler and
receive events through ``loop.call_soon_threadsafe``. The decode loop never
runs on the event loop.

Failure policy: if llama.cpp cannot place a batch even after all idle
sequences were evicted (fragmentation), the most recently admitted request
fails with `EngineUnavailable` and the step is retried without it.

ARCHITECTURE: this module is the lifecycle, the lock and the decode loop. What
is decided per sequence (which one a prompt goes to, what is shared, saved or
restored, how many cells are used) is `KVPlacement`'s; what belongs to one
request (its batch share, its tokens, its `Finished` event) is `batch.Active`'s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inference.config import ChatEngineConfig, LlamaCppOptions, per_slot_layout
from inference.engines.llamacpp.backends import load_cpu_backend
from inference.engines.llamacpp.batch import Active, Span, build_batch, threadsafe_sink
from inference.engines.llamacpp.model import (
    BatchItem,
    ContextShape,
    LlamaModel,
    default_threads,
    lower_priority,
)
from inference.engines.llamacpp.prompt import prompt_tokens, prompt_with_public_len
from inference.engines.llamacpp.repack import resolve_repack
from inference.engines.llamacpp.step_budget import StepBudget
from inference.engines.llamacpp.weights import resolve_weights
from inference.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
)
from inference.kv_placement import KVPlacement, KVWant, Placement
from inference.scheduler import Scheduler, Ticket
from inference.stats import EngineObserver, EngineStats
from inference.text import TextStream
from inference.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    PromptSize,
    StreamEvent,
    TextDelta,
    owned_by,
)

log = logging.getLogger(__name__)


# the defaults are inference.config's (written once there)
_SHARED, _OPTIONS = ChatEngineConfig(), LlamaCppOptions()


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    """Sizing of the engine. ``n_ctx`` cells are shared by all ``n_slots`` sequences."""

    model_path: Path
    model_id: str
    n_ctx: int = _SHARED.n_ctx
    n_slots: int = _SHARED.n_slots
    n_batch: int = 512  # tokens decoded per step, all sequences together
    itl_target_ms: int = _OPTIONS.itl_target_ms  # the step time to aim for (`step_budget`)
    prefill_chunk: int = _OPTIONS.prefill_chunk  # prompt tokens per step until steps are timed
    n_threads: int = _OPTIONS.n_threads  # 0: every core this process may use
    # Niceness of the decode threads (Linux; 0: unchanged). Decoding is batch work: the
    # event loop, the classifiers, PostgreSQL and Redis should get a core the moment a
    # request needs one, and decoding takes whatever is left (`model.lower_priority`).
    nice: int = _OPTIONS.nice
    max_waiting: int = _SHARED.max_waiting
    host_cache_bytes: int = _OPTIONS.host_cache_bytes
    # weight repacking: "auto" probes once per model, CPU and build (`repack.resolve_repack`),
    # caching the answer in ``state_dir``
    repack: str = _OPTIONS.repack
    weights: str = _OPTIONS.weights  # "auto": a Q8_0 copy of Q4_1/Q5_1 weights (`weights`)
    kv_layout: str = _OPTIONS.kv_layout  # "auto", "unified" or "per_slot" (inference.config)
    state_dir: Path | None = None

    @property
    def per_slot(self) -> bool:
        return per_slot_layout(self.kv_layout, self.n_ctx, self.n_slots)

    @property
    def seq_cells(self) -> int:
        """The most cells one sequence may hold."""
        return self.n_ctx // self.n_slots if self.per_slot else self.n_ctx


class LlamaCppEngine:
    """Serves one GGUF model with continuous batching and per-conversation KV reuse."""

    def __init__(self, config: LlamaCppConfig, observer: EngineObserver | None = None) -> None:
        self.config = config
        self._observer = observer
        self._model: LlamaModel | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._scheduler: Scheduler[Active] = Scheduler(max_waiting=config.max_waiting)
        self._running: list[Active] = []
        # sequences change on the decode thread only; `forget` drops host copies (lock held)
        self._kv = KVPlacement(
            config.n_slots, config.n_ctx, config.host_cache_bytes, per_slot=config.per_slot
        )
        self._counters = {"queried": 0, "hit": 0, "prompt": 0, "generated": 0}
        self._budget = StepBudget(config.itl_target_ms / 1000.0, config.prefill_chunk)
        self._max_seq_len = config.seq_cells
        self._forgetting: set[str] = set()  # users whose idle slots the decode thread clears

    @property
    def model_id(self) -> str:
        return self.config.model_id

    # --- lifecycle

    async def start(self) -> None:
        if self._thread is not None:
            return
        shape = ContextShape(
            n_ctx=self.config.n_ctx,
            n_seq_max=self.config.n_slots,
            n_batch=self.config.n_batch,
            n_threads=self.config.n_threads or default_threads(),
            kv_unified=not self.config.per_slot,
        )
        self._model = await asyncio.to_thread(self._load, shape)
        self._kv.attach(self._model)
        cells = self.config.seq_cells
        self._max_seq_len = min(cells, self._model.n_ctx_train or cells)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llamacpp-decode", daemon=True)
        self._thread.start()

    def _load(self, shape: ContextShape) -> LlamaModel:
        path = resolve_weights(self.config.weights, self.config.model_path, self.config.state_dir)
        repack = resolve_repack(self.config.repack, path, self.config.state_dir)
        model = LlamaModel(path, shape, repack=repack)
        log.info("llama.cpp CPU backend: %s", load_cpu_backend().describe())
        cells, slots = self.config.n_ctx, self.config.n_slots
        layout = f"{cells // slots} per slot" if self.config.per_slot else "one unified pool"
        log.info("KV cache: %d cells for %d sequences, %s", cells, slots, layout)
        return model

    async def close(self) -> None:
        thread = self._thread
        if thread is None:
            return
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        # the decode thread may be mid-step: it finishes it with the model still there
        await asyncio.to_thread(thread.join)
        self._thread = None
        if self._model is not None:
            self._model.close()
            self._model = None

    async def health(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            raise EngineUnavailable(f"engine {self.model_id} is not running")

    # --- requests (event loop side)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        model = self._require_model()
        problems = request.problems()
        if problems:
            raise InvalidRequest("; ".join(problems))
        # Templating and tokenising a long prompt takes a millisecond or more: off the
        # event loop, which serves every other request meanwhile (llama.cpp's tokenizer
        # releases the GIL; the vocabulary is read-only, so the decode thread is unaffected).
        prompt, public_len = await asyncio.to_thread(prompt_with_public_len, model, request)
        active, events = self._submit(model, request, prompt, public_len)
        try:
            while True:
                event = await events.get()
                if isinstance(event, InferenceError):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not active.done:
                self._abort(request.request_id)

    async def measure(self, request: GenerationRequest) -> PromptSize:
        model = self._require_model()
        tokens = await asyncio.to_thread(prompt_tokens, model, request)
        return PromptSize(len(tokens), self._max_seq_len)

    async def forget(self, user_id: str) -> None:
        with self._lock:
            self._kv.drop_saved(lambda owner: owned_by(owner, user_id))
            if self._thread is None or not self._thread.is_alive():
                return
            self._forgetting.add(user_id)  # slots: the decode thread owns the KV
            self._wake.notify_all()
        await asyncio.to_thread(self._wait_forgotten, user_id)

    def _wait_forgotten(self, user_id: str) -> None:
        with self._lock:
            while user_id in self._forgetting and self._thread and self._thread.is_alive():
                self._wake.wait(0.5)

    def _forget_idle(self) -> None:
        """Clear the idle slots of the users being forgotten (decode thread, lock held)."""
        if not self._forgetting:
            return
        users = tuple(self._forgetting)
        self._kv.forget(lambda owner: any(owned_by(owner, user) for user in users))
        self._forgetting.clear()
        self._wake.notify_all()

    async def abort(self, request_id: str) -> None:
        self._abort(request_id)

    def stats(self) -> EngineStats:
        with self._lock:
            kv = self._kv.usage()
            return EngineStats(
                model_id=self.model_id,
                running=len(self._running),
                waiting=self._scheduler.waiting,
                kv_cells_total=kv.cells_total,
                kv_cells_used=kv.cells_used,
                kv_cells_cached=kv.cells_cached,
                prefix_queried_tokens=self._counters["queried"],
                prefix_hit_tokens=self._counters["hit"],
                prompt_tokens=self._counters["prompt"],
                generated_tokens=self._counters["generated"],
                host_cache_bytes=kv.host_bytes,
                host_cache_entries=kv.host_entries,
            )

    def _submit(
        self, model: LlamaModel, request: GenerationRequest, prompt: list[int], public_len: int
    ) -> tuple[Active, asyncio.Queue[Any]]:
        needed = len(prompt) + request.sampling.max_tokens
        if needed > self._max_seq_len:
            raise ContextLengthExceeded(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({request.sampling.max_tokens})"
                f" exceeds the context of {self._max_seq_len} tokens"
            )
        sampler = model.new_sampler(request.sampling, request.grammar, request.json_schema)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        active = Active(
            request=request,
            prompt=prompt,
            public_len=public_len,
            sampler=sampler,
            sink=threadsafe_sink(loop, events),
            submitted=time.monotonic(),
            text=TextStream(request.sampling.stop),
        )
        ticket = Ticket(request.request_id, request.user_id, request.priority, active)
        active.ticket = ticket
        with self._lock:
            try:
                if self._stopping:  # closed while the prompt was being tokenised
                    raise EngineUnavailable(f"engine {self.model_id} is stopping")
                self._scheduler.submit(ticket, timeout_s=request.deadline_s)
            except Exception:
                model.free_sampler(sampler)
                raise
            self._wake.notify()
        return active, events

    def _abort(self, request_id: str) -> None:
        with self._lock:
            ticket = self._scheduler.cancel(request_id)
            if ticket is not None:
                self._finish_unstarted(ticket.payload, "abort")
                return
            for active in self._running:
                if active.request.request_id == request_id:
                    active.cancelled = True
                    self._wake.notify()

    def _require_model(self) -> LlamaModel:
        if self._model is None or self._thread is None:
            raise EngineUnavailable(f"engine {self.model_id} is not running")
        return self._model

    # --- the decode thread

    def _loop(self) -> None:
        lower_priority(self.config.nice)  # before the first decode starts llama.cpp's threads
        try:
            while True:
                with self._lock:
                    while not self._stopping and not (
                        self._running or self._scheduler.waiting or self._forgetting
                    ):
                        self._wake.wait()
                    if self._stopping:
                        break
                    self._forget_idle()
                    self._reap()
                    self._scheduler.admit(self._fits)
                    work = list(self._running)
                if work:
                    self._step(work)
        except Exception:
            log.exception("decode loop failed")
        finally:
            self._fail_everything(EngineUnavailable(f"engine {self.model_id} stopped"))

    def _reap(self) -> None:
        now = time.monotonic()
        for active in list(self._running):
            deadline = active.request.deadline_s
            if active.cancelled:
                self._finish(active, "abort")
            elif deadline is not None and now - active.submitted >= deadline:
                self._finish(active, "timeout")
        for ticket in self._scheduler.expire():
            model = self._require_model()
            model.free_sampler(ticket.payload.sampler)
            ticket.payload.done = True
            ticket.payload.sink(DeadlineExceeded("the request waited past its deadline"))

    # --- admission

    def _fits(self, ticket: Ticket[Active]) -> bool:
        """Admit the request when the placement finds it a sequence and cells (lock held)."""
        active = ticket.payload
        request = active.request
        want = KVWant(
            owner=request.user_id,
            conversation_id=request.conversation_id,
            prompt=active.prompt,
            public_len=active.public_len,
            max_tokens=request.sampling.max_tokens,
        )
        placed = self._kv.admit(want, reserved=sum(a.reserved() for a in self._running))
        if placed is None:
            return False
        self._start(active, placed)
        return True

    def _start(self, active: Active, placed: Placement) -> None:
        active.seq, active.n_cached, active.n_past = placed.seq, placed.reused, placed.reused
        active.admitted = time.monotonic()
        self._running.append(active)
        self._counters["queried"] += len(active.prompt)
        self._counters["hit"] += placed.reused
        self._counters["prompt"] += len(active.prompt)

    # --- one step

    def _step(self, work: list[Active]) -> None:
        """Decode one batch. The lock guards bookkeeping only: the event loop never
        waits for the model (only this thread changes slots and cells)."""
        started = time.perf_counter()
        items, spans = build_batch(work, self._budget, self.config.n_batch)
        if not items:
            return
        decodes = sum(1 for span in spans if not span.active.prefilling)
        with self._lock:
            room = self._kv.make_room(len(items))
        if not (room and self._decode(items)):
            with self._lock:
                self._fail_newest()
            return
        with self._lock:
            self._record_decoded(spans)
        for span in spans:
            if span.logits:
                token = self._require_model().sample(span.active.sampler, span.logit_index)
                with self._lock:
                    self._on_token(span.active, token)
        # the whole step as a stream sees it: batch, decode, sampling, text
        self._budget.observe(decodes, len(items) - decodes, time.perf_counter() - started)

    def _decode(self, items: list[BatchItem]) -> bool:
        model = self._require_model()
        status = model.decode(items)
        if status == 1:  # no room in the KV cache: evict every idle sequence, retry once
            with self._lock:
                self._kv.make_room(self._kv.total)
            status = model.decode(items)
        if status != 0:
            log.error("llama_decode failed", extra={"status": status, "tokens": len(items)})
        return status == 0

    def _record_decoded(self, spans: list[Span]) -> None:
        for span in spans:
            active = span.active
            assert active.seq is not None
            self._kv.extend(active.seq, span.tokens)
            active.n_past += len(span.tokens)
            if span.tokens == [active.next_token]:
                active.next_token = None

    def _on_token(self, active: Active, token: int) -> None:
        if active.done:
            return
        reason = active.accept(token, self._require_model())
        self._counters["generated"] += 1
        if reason is not None:
            self._finish(active, reason)

    # --- endings

    def _finish(self, active: Active, reason: FinishReason) -> None:
        tail = active.text.flush()
        if tail:
            active.sink(TextDelta(tail))
        active.done = True
        if active in self._running:
            self._running.remove(active)
        if active.ticket is not None:
            self._scheduler.finished(active.ticket)
        if active.seq is not None:
            self._kv.release(active.seq)
        self._require_model().free_sampler(active.sampler)
        finished = active.finished_event(reason)
        active.sink(finished)
        if self._observer is not None:
            self._observer.request_finished(self.model_id, finished, active.inter_token)

    def _finish_unstarted(self, active: Active, reason: FinishReason) -> None:
        active.done = True
        self._require_model().free_sampler(active.sampler)
        active.sink(active.finished_event(reason))

    def _fail_newest(self) -> None:
        if not self._running:
            return
        newest = max(self._running, key=lambda a: a.admitted or 0.0)
        self._finish(newest, "abort")
        newest.sink(EngineUnavailable("the KV cache has no room for this request"))

    def _fail_everything(self, error: InferenceError) -> None:
        with self._lock:
            for active in list(self._running):
                active.done = True
                active.sink(error)
            self._running.clear()
            while self._scheduler.waiting:
                ticket = self._scheduler.admit(lambda _: True)[0]
                ticket.payload.done = True
                ticket.payload.sink(error)
