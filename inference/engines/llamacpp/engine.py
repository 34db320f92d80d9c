"""The llama.cpp engine: continuous batching over one model, KV reuse per conversation.

One decode thread owns the model. Each step it (1) drops cancelled and late
requests, (2) admits waiting requests in the scheduler's order while their KV
need fits, placing each on a sequence whose cached tokens it can reuse
(`inference.kv.SlotTable`), and (3) decodes one batch that holds the next token
of every generating sequence plus chunks of prompts still being prefilled, so
running streams keep flowing while a long prompt is computed.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.engines.llamacpp.backends import load_cpu_backend
from inference.engines.llamacpp.model import BatchItem, ContextShape, LlamaModel, default_threads
from inference.engines.llamacpp.repack import resolve_repack
from inference.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
)
from inference.kv import HostCache, KVCells, Plan, SavedSequence, Slot, SlotTable, common_prefix
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
    Timings,
    Usage,
    owned_by,
)

log = logging.getLogger(__name__)

Sink = Callable[[StreamEvent | InferenceError], None]

# Wait for another request's public prefix only when it saves at least this many tokens.
_MIN_SHARED_WAIT = 32


@dataclass(frozen=True, slots=True)
class LlamaCppConfig:
    """Sizing of the engine. ``n_ctx`` cells are shared by all ``n_slots`` sequences."""

    model_path: Path
    model_id: str
    n_ctx: int = 8192
    n_slots: int = 16
    n_batch: int = 512  # tokens decoded per step, all sequences together
    prefill_chunk: int = 128  # prompt tokens per step while others generate (CPU: small)
    n_threads: int = 0  # 0: every core this process may use
    # Niceness of the decode threads (Linux; 0: unchanged). Decoding is batch work: the
    # event loop, the classifiers, PostgreSQL and Redis should get a core the moment a
    # request needs one, and decoding takes whatever is left (`_lower_priority`).
    nice: int = 10
    max_waiting: int = 256
    host_cache_bytes: int = 512 << 20
    # weight repacking: "auto" probes once per model, CPU and build (`repack.resolve_repack`),
    # caching the answer in ``state_dir``
    repack: str = "auto"
    state_dir: Path | None = None


@dataclass
class _Active:
    """A request inside the engine, from submission to its `Finished` event."""

    request: GenerationRequest
    prompt: list[int]
    public_len: int
    sampler: Any
    sink: Sink
    submitted: float
    text: TextStream
    ticket: Ticket[_Active] | None = None
    slot: Slot | None = None
    admitted: float | None = None
    first_token: float | None = None
    last_token: float | None = None
    inter_token: list[float] = field(default_factory=list)
    n_cached: int = 0
    n_past: int = 0  # this request's tokens whose KV is in its slot
    generated: list[int] = field(default_factory=list)
    next_token: int | None = None  # sampled, not yet decoded
    cancelled: bool = False
    done: bool = False

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.prompt)

    def reserved(self) -> int:
        """Cells this request may still add: the rest of its prompt and of its max_tokens."""
        prompt_left = len(self.prompt) - min(self.n_past, len(self.prompt))
        return prompt_left + self.request.sampling.max_tokens - len(self.generated)


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
        self._scheduler: Scheduler[_Active] = Scheduler(max_waiting=config.max_waiting)
        self._running: list[_Active] = []
        self._slots = SlotTable(config.n_slots)
        self._cells = KVCells(config.n_ctx)
        self._host = HostCache(config.host_cache_bytes)
        self._counters = {"queried": 0, "hit": 0, "prompt": 0, "generated": 0}
        self._max_seq_len = config.n_ctx
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
        )
        self._model = await asyncio.to_thread(self._load, shape)
        self._max_seq_len = min(self.config.n_ctx, self._model.n_ctx_train or self.config.n_ctx)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llamacpp-decode", daemon=True)
        self._thread.start()

    def _load(self, shape: ContextShape) -> LlamaModel:
        path = self.config.model_path
        repack = resolve_repack(self.config.repack, path, self.config.state_dir)
        model = LlamaModel(path, shape, repack=repack)
        log.info("llama.cpp CPU backend: %s", load_cpu_backend().describe())
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
        prompt, public_len = await asyncio.to_thread(self._prompt, model, request)
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
        tokens = await asyncio.to_thread(self._tokens, model, request)
        return PromptSize(len(tokens), self._max_seq_len)

    async def forget(self, user_id: str) -> None:
        with self._lock:
            self._host.drop_owned(lambda owner: owned_by(owner, user_id))
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
        for slot in self._slots.idle():
            owner = slot.owner
            if owner is not None and any(owned_by(owner, u) for u in self._forgetting):
                self._evict(slot, keep=0, save=False)
        self._forgetting.clear()
        self._wake.notify_all()

    async def abort(self, request_id: str) -> None:
        self._abort(request_id)

    def stats(self) -> EngineStats:
        with self._lock:
            busy = [s.seq_id for s in self._slots.busy()]
            used = self._cells.held_by(busy)
            return EngineStats(
                model_id=self.model_id,
                running=len(self._running),
                waiting=self._scheduler.waiting,
                kv_cells_total=self._cells.total,
                kv_cells_used=used,
                kv_cells_cached=self._cells.used - used,
                prefix_queried_tokens=self._counters["queried"],
                prefix_hit_tokens=self._counters["hit"],
                prompt_tokens=self._counters["prompt"],
                generated_tokens=self._counters["generated"],
                host_cache_bytes=self._host.bytes,
                host_cache_entries=len(self._host),
            )

    def _submit(
        self, model: LlamaModel, request: GenerationRequest, prompt: list[int], public_len: int
    ) -> tuple[_Active, asyncio.Queue[Any]]:
        needed = len(prompt) + request.sampling.max_tokens
        if needed > self._max_seq_len:
            raise ContextLengthExceeded(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({request.sampling.max_tokens})"
                f" exceeds the context of {self._max_seq_len} tokens"
            )
        sampler = model.new_sampler(request.sampling, request.grammar, request.json_schema)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Any] = asyncio.Queue()
        active = _Active(
            request=request,
            prompt=prompt,
            public_len=public_len,
            sampler=sampler,
            sink=_threadsafe_sink(loop, events),
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

    def _tokens(self, model: LlamaModel, request: GenerationRequest) -> list[int]:
        if request.prompt_tokens:
            tokens = list(request.prompt_tokens)
            if any(not 0 <= t < model.n_vocab for t in tokens):
                raise InvalidRequest(f"prompt token ids must be in [0, {model.n_vocab})")
            return tokens
        if request.prompt:
            return model.tokenize(request.prompt, add_bos=model.add_bos)
        text = model.render_chat(request.messages, generation_prompt=True)
        return model.tokenize(text, add_bos=model.add_bos)

    def _prompt(self, model: LlamaModel, request: GenerationRequest) -> tuple[list[int], int]:
        tokens = self._tokens(model, request)
        if not request.messages:
            return tokens, min(request.public_prefix_tokens, len(tokens))
        if not request.public_prefix_messages:
            return tokens, 0
        head = model.render_chat(
            request.messages[: request.public_prefix_messages], generation_prompt=False
        )
        return tokens, common_prefix(model.tokenize(head, add_bos=model.add_bos), tokens)

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
        _lower_priority(self.config.nice)  # before the first decode starts llama.cpp's threads
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

    def _fits(self, ticket: Ticket[_Active]) -> bool:
        active = ticket.payload
        user = active.request.user_id
        plan = self._slots.plan(user, active.prompt, active.public_len, self._host)
        if plan is None or self._public_prefix_in_progress(active, plan.reuse):
            return False
        if self._cells_needed(active, plan) > self._cells_available(plan):
            return False
        self._place(active, plan)
        return True

    def _public_prefix_in_progress(self, active: _Active, reuse: int) -> bool:
        """Is a running request computing a prefix this one could share beyond ``reuse``?

        Then waiting a step or two beats computing the same tokens again:
        concurrent first turns share one persona prompt, and the personas of a
        panel share one conversation (the same user's prompts are shared whole).
        """
        wanted = active.prompt[: active.public_len]
        user = active.request.user_id
        for other in self._running:
            if other.request.user_id == user:
                shared = min(common_prefix(other.prompt, active.prompt), len(active.prompt) - 1)
            else:
                shared = common_prefix(other.prompt[: other.public_len], wanted)
            if shared - reuse >= _MIN_SHARED_WAIT and other.n_past < shared:
                return True
        return False

    def _cells_needed(self, active: _Active, plan: Plan) -> int:
        fresh = len(active.prompt) - plan.reuse + active.request.sampling.max_tokens
        return fresh + (plan.reuse if plan.source == "host" else 0)

    def _cells_available(self, plan: Plan) -> int:
        kept: dict[int, int] = {}
        if plan.source == "slot":
            kept[plan.slot] = plan.reuse
        elif plan.source == "public" and plan.donor is not None:
            kept[plan.donor] = plan.reuse
        busy = [s.seq_id for s in self._slots.busy()]
        held = self._cells.held_by([*busy, *kept], limits=kept)
        return self._cells.total - held - sum(a.reserved() for a in self._running)

    def _place(self, active: _Active, plan: Plan) -> None:
        slot = self._slots.slots[plan.slot]
        reuse = plan.reuse
        if plan.source == "slot":  # the same user's sequence: drop only its diverging tail
            self._evict(slot, keep=reuse, save=False)
        elif plan.source == "public" and plan.donor == plan.slot:
            self._evict(slot, keep=reuse)
        else:
            # Take the planned host entry before evicting: saving the evicted sequence
            # may push that very entry out of the host cache (or replace it).
            saved = None
            if plan.source == "host" and plan.host_key is not None:
                saved = self._host.take(plan.host_key)
            self._evict(slot, keep=0)
            if plan.source == "public" and plan.donor is not None:
                self._share(plan.donor, slot, reuse)
            elif saved is not None:
                reuse = self._restore(slot, saved, reuse)
        request = active.request
        slot.owner, slot.conversation_id = request.user_id, request.conversation_id
        slot.public_len, slot.busy = active.public_len, True
        active.slot, active.n_cached, active.n_past = slot, reuse, reuse
        active.admitted = time.monotonic()
        self._running.append(active)
        self._counters["queried"] += len(active.prompt)
        self._counters["hit"] += reuse
        self._counters["prompt"] += len(active.prompt)

    def _evict(self, slot: Slot, keep: int, save: bool = True) -> None:
        """Shrink ``slot`` to its first ``keep`` tokens, saving private KV that would be lost.

        ``save=False`` when the slot's own conversation goes on from ``keep``: what is
        dropped is a tail the new prompt no longer contains (a re-tokenized reply).
        """
        model = self._require_model()
        private = len(slot.tokens) > max(keep, slot.public_len)
        if save and slot.owner is not None and private:
            saved = SavedSequence(
                slot.owner,
                slot.conversation_id,
                tuple(slot.tokens),
                slot.public_len,
                model.seq_save(slot.seq_id),
            )
            self._host.put(saved)
        model.seq_truncate(slot.seq_id, keep)
        self._cells.truncate(slot.seq_id, keep)
        del slot.tokens[keep:]
        if keep == 0:
            slot.owner, slot.conversation_id, slot.public_len = None, None, 0

    def _share(self, donor: int, slot: Slot, n: int) -> None:
        self._require_model().seq_share_prefix(donor, slot.seq_id, n)
        self._cells.share_prefix(donor, slot.seq_id, n)
        slot.tokens = list(self._slots.slots[donor].tokens[:n])

    def _restore(self, slot: Slot, saved: SavedSequence, reuse: int) -> int:
        """Bring a saved sequence back into ``slot``; return how many tokens it gives."""
        if not self._make_room(len(saved.tokens), protect={slot.seq_id}):
            return 0
        if not self._require_model().seq_restore(slot.seq_id, saved.state):
            log.warning("host cache restore failed", extra={"tokens": len(saved.tokens)})
            return 0
        self._cells.extend(slot.seq_id, len(saved.tokens))
        slot.tokens = list(saved.tokens)
        self._require_model().seq_truncate(slot.seq_id, reuse)
        self._cells.truncate(slot.seq_id, reuse)
        del slot.tokens[reuse:]
        return reuse

    def _make_room(self, cells: int, protect: set[int]) -> bool:
        """Evict idle sequences, least recently used first, until ``cells`` are free."""
        while self._cells.free < cells:
            candidates = [s for s in self._slots.idle() if s.tokens and s.seq_id not in protect]
            if not candidates:
                return False
            self._evict(min(candidates, key=lambda s: s.last_used), keep=0)
        return True

    # --- one step

    def _step(self, work: list[_Active]) -> None:
        """Decode one batch. The lock guards bookkeeping only: the event loop never
        waits for the model (only this thread changes slots and cells)."""
        items, spans = self._build_batch(work)
        if not items:
            return
        with self._lock:
            room = self._make_room(len(items), protect=set())
        if not (room and self._decode(items)):
            with self._lock:
                self._fail_newest()
            return
        with self._lock:
            self._record_decoded(spans)
        for active, batch_index in self._logit_positions(spans):
            token = self._require_model().sample(active.sampler, batch_index)
            with self._lock:
                self._on_token(active, token)

    def _build_batch(self, work: list[_Active]) -> tuple[list[BatchItem], list[_Span]]:
        items: list[BatchItem] = []
        spans: list[_Span] = []
        for active in work:
            if active.next_token is not None and active.slot is not None:
                spans.append(_Span(active, len(items), [active.next_token], logits=True))
                items.append(BatchItem(active.next_token, active.n_past, active.slot.seq_id, True))
        # Prompts are computed first come, first served within a per-step budget: on a
        # compute-bound device a token costs about the same alone or batched, so finishing
        # one prompt before starting the next gives earlier first tokens, and a small
        # budget keeps the generating streams flowing. With none generating, use it all.
        # A user's prompt goes before any background job's admitted earlier (the sort is
        # stable: admission order within a priority).
        budget = min(
            self.config.prefill_chunk if items else self.config.n_batch,
            self.config.n_batch - len(items),
        )
        for active in sorted(work, key=lambda a: int(a.request.priority)):
            if not active.prefilling or budget <= 0 or active.slot is None:
                continue
            n = min(len(active.prompt) - active.n_past, budget)
            chunk = active.prompt[active.n_past : active.n_past + n]
            last = active.n_past + n == len(active.prompt)
            spans.append(_Span(active, len(items), chunk, logits=last))
            for i, token in enumerate(chunk):
                logits = last and i == n - 1
                items.append(BatchItem(token, active.n_past + i, active.slot.seq_id, logits))
            budget -= n
        return items, spans

    def _decode(self, items: list[BatchItem]) -> bool:
        model = self._require_model()
        status = model.decode(items)
        if status == 1:  # no room in the KV cache: evict every idle sequence, retry once
            with self._lock:
                self._make_room(self._cells.total, protect=set())
            status = model.decode(items)
        if status != 0:
            log.error("llama_decode failed", extra={"status": status, "tokens": len(items)})
        return status == 0

    def _record_decoded(self, spans: list[_Span]) -> None:
        for span in spans:
            slot = span.active.slot
            assert slot is not None
            self._cells.extend(slot.seq_id, len(span.tokens))
            slot.tokens.extend(span.tokens)
            span.active.n_past += len(span.tokens)
            if span.tokens == [span.active.next_token]:
                span.active.next_token = None

    @staticmethod
    def _logit_positions(spans: list[_Span]) -> list[tuple[_Active, int]]:
        return [(s.active, s.start + len(s.tokens) - 1) for s in spans if s.logits]

    def _on_token(self, active: _Active, token: int) -> None:
        if active.done:
            return
        now = time.monotonic()
        if active.last_token is not None:
            active.inter_token.append(now - active.last_token)
        active.first_token = active.first_token or now
        active.last_token = now
        active.generated.append(token)
        self._counters["generated"] += 1
        model = self._require_model()
        if model.is_end_of_generation(token) and not active.request.sampling.ignore_eos:
            self._finish(active, "stop")
            return
        text = active.text.feed(model.token_bytes(token))
        if text:
            active.sink(TextDelta(text))
        if active.text.stopped:
            self._finish(active, "stop")
        elif len(active.generated) >= active.request.sampling.max_tokens:
            self._finish(active, "length")
        else:
            active.next_token = token

    # --- endings

    def _finish(self, active: _Active, reason: FinishReason) -> None:
        tail = active.text.flush()
        if tail:
            active.sink(TextDelta(tail))
        active.done = True
        if active in self._running:
            self._running.remove(active)
        if active.ticket is not None:
            self._scheduler.finished(active.ticket)
        if active.slot is not None:
            active.slot.busy = False
            active.slot.last_used = time.monotonic()
        self._require_model().free_sampler(active.sampler)
        finished = self._finished_event(active, reason)
        active.sink(finished)
        if self._observer is not None:
            self._observer.request_finished(self.model_id, finished, active.inter_token)

    def _finish_unstarted(self, active: _Active, reason: FinishReason) -> None:
        active.done = True
        self._require_model().free_sampler(active.sampler)
        active.sink(self._finished_event(active, reason))

    @staticmethod
    def _finished_event(active: _Active, reason: FinishReason) -> Finished:
        now = time.monotonic()
        admitted = active.admitted or now
        first = active.first_token
        return Finished(
            finish_reason=reason,
            usage=Usage(len(active.prompt), active.n_cached, len(active.generated)),
            timings=Timings(
                queue_s=admitted - active.submitted,
                time_to_first_token_s=None if first is None else first - active.submitted,
                decode_s=0.0 if first is None else now - first,
            ),
        )

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


@dataclass(frozen=True, slots=True)
class _Span:
    """The tokens one request contributes to a batch, starting at batch index ``start``."""

    active: _Active
    start: int
    tokens: list[int]
    logits: bool


def _lower_priority(nice: int) -> None:
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


def _threadsafe_sink(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> Sink:
    def sink(event: StreamEvent | InferenceError) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, event)

    return sink
