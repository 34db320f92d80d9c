"""`ProcessEngine`: the API side of an engine that runs in its own process.

Like vLLM's engine core, the model runs in a child process
(`inference.engines.process.worker`, started and stopped by `child`) and the
API process talks to it over a socketpair (`protocol`). A native crash (a
segfault in a kernel), a wedged or dead decode loop, an out-of-memory kill:
each ends the child, never the API.

The supervisor here notices the end (the channel closes), and then:

- a request that had streamed text fails with `EngineUnavailable` (an SSE
  ``error`` event or a JSON 503 at the edge); one that had not (it was queued
  or prefilling) is submitted again to the new process, once;
- new requests wait for the new process, at most ``restart_wait_s`` (and their
  own deadline), then get `EngineOverloaded` (503 with ``Retry-After``);
- ``health()`` raises while the engine is down, so ``/health/ready`` says so;
- the child is started again, backing off from ``backoff_s`` (doubled per
  failed start up to ``max_backoff_s``, reset after a start that lasted).

The child sends a stats snapshot four times a second and every finished
request's timings, so `stats()` stays synchronous and the latency histograms
and KV gauges in ``/metrics`` are the API process's as before. Counters are
totals since the engine started; across restarts this side adds the totals of
earlier processes, so they never go backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from inference.config import ChatEngineConfig
from inference.engines.exits import exit_text
from inference.engines.process.child import Child, spawn, stop
from inference.engines.process.protocol import (
    Abort,
    Delta,
    Done,
    Failed,
    Forget,
    Forgotten,
    Measure,
    Measured,
    Observed,
    Stats,
    Submit,
    error_of,
)
from inference.errors import (
    DeadlineExceeded,
    EngineOverloaded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
)
from inference.stats import EngineObserver, EngineStats
from inference.types import Finished, GenerationRequest, PromptSize, StreamEvent, TextDelta

log = logging.getLogger(__name__)

_DEADLINE_GRACE_S = 5.0  # past a request's deadline, before this side gives up on it
_QUESTION_S = 30.0  # a measure or a forget takes milliseconds; this long means wedged

_COUNTERS = (
    "prefix_queried_tokens",
    "prefix_hit_tokens",
    "prompt_tokens",
    "generated_tokens",
    "preemptions",
)


@dataclass(frozen=True, slots=True)
class _Died:
    """Put on every open stream when the engine process ends."""

    reason: str
    streamed: bool = False  # the request had sent text before: it cannot start over


Event = StreamEvent | InferenceError | _Died | PromptSize | None


class ProcessEngine:
    """The `Engine` protocol over an engine process that is restarted when it dies."""

    def __init__(
        self,
        config: ChatEngineConfig,
        observer: EngineObserver | None = None,
        *,
        restart_wait_s: float = 30.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        stall_s: float = 300.0,
    ) -> None:
        self.config = dataclasses.replace(config, process="inline")  # what the child runs
        self._observer = observer
        self._restart_wait_s = restart_wait_s
        self._backoff = (backoff_s, max_backoff_s)
        self._stall_s = stall_s
        self._heard = self._progressed = time.monotonic()  # stats arrived; work moved on
        self._work = (0, 0)  # the engine process's own token counters at the last snapshot
        self._child: Child | None = None
        self._streams: dict[str, asyncio.Queue[Event]] = {}
        self._answers: dict[str, asyncio.Queue[Event]] = {}  # measures, forgets: not counted
        self._up: asyncio.Event | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._down_reason = "not started"
        self._stats = _empty_stats(config.model_id)
        self._base = dict.fromkeys(_COUNTERS, 0)  # totals of earlier processes
        self.restarts = 0

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def pid(self) -> int | None:
        """The engine process's id while it runs."""
        child = self._child
        return child.process.pid if child is not None and child.alive else None

    # --- lifecycle

    async def start(self) -> None:
        """Start the engine process and wait until its model is loaded (errors propagate)."""
        if self._supervisor is not None:
            return
        self._closing = False
        self._up = asyncio.Event()
        await self._prepare_model()
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name="engine-supervisor")

    async def close(self) -> None:
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        child, self._child = self._child, None
        if child is not None:
            await stop(child)
        self._fail_streams(_Died("the engine stopped"))
        self._down_reason = "stopped"

    async def health(self) -> None:
        if self._up is None or not self._up.is_set():
            raise EngineUnavailable(f"engine {self.model_id} is down: {self._down_reason}")

    def stats(self) -> EngineStats:
        """The engine process's last snapshot (at most a quarter second old), except the
        request counts: this side knows them exactly, since every request goes through it
        (a request sent but not yet seen there counts as waiting)."""
        open_requests = len(self._streams)
        running = min(self._stats.running, open_requests)
        return dataclasses.replace(self._stats, running=running, waiting=open_requests - running)

    # --- requests

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        problems = request.problems()
        if problems:
            raise InvalidRequest("; ".join(problems))
        request = dataclasses.replace(
            request, deadline_s=self.config.deadline_for(request.deadline_s)
        )
        for attempt in range(2):
            child = await self._ready_child(request)
            retry = False
            async for event in self._stream(child, request):
                if isinstance(event, _Died):
                    if attempt or event.streamed:
                        raise EngineUnavailable(
                            f"the engine process stopped ({event.reason}); it is being restarted"
                        )
                    retry = True
                    break
                yield event
            if not retry:
                return

    async def _stream(
        self, child: Child, request: GenerationRequest
    ) -> AsyncGenerator[StreamEvent | _Died, None]:
        rid = request.request_id
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._streams[rid] = queue
        if child.alive:
            child.channel.send(Submit(request))
        else:  # it ended after it was chosen: the supervisor will not tell this queue
            queue.put_nowait(_Died(self._down_reason))
        finished, streamed = False, False
        # The engine ends a late request itself ("timeout"); this is for an engine that
        # cannot: wedged in a kernel, it answers nothing until the watchdog kills it.
        expires = (
            None
            if request.deadline_s is None
            else time.monotonic() + request.deadline_s + _DEADLINE_GRACE_S
        )
        try:
            while True:
                event = await _next(queue, expires)
                if isinstance(event, InferenceError):
                    finished = True
                    raise event
                if isinstance(event, _Died):
                    finished = True
                    yield dataclasses.replace(event, streamed=streamed)
                    return
                assert isinstance(event, TextDelta | Finished)  # answers go to `_answers`
                streamed = streamed or isinstance(event, TextDelta)
                finished = isinstance(event, Finished)
                yield event
                if finished:
                    return
        finally:
            if self._streams.get(rid) is queue:
                del self._streams[rid]
            if not finished and child.alive:
                child.channel.send(Abort(rid))

    async def measure(self, request: GenerationRequest) -> PromptSize | None:
        child = await self._ready_child(request)
        rid = f"measure-{uuid.uuid4().hex}"
        answer = await self._ask(child, rid, Measure(dataclasses.replace(request, request_id=rid)))
        assert isinstance(answer, PromptSize | None)
        return answer

    async def forget(self, user_id: str) -> None:
        child = self._child
        if child is None or not child.alive:  # a new process starts with empty caches
            return
        rid = f"forget-{uuid.uuid4().hex}"
        await self._ask(child, rid, Forget(rid, user_id))

    async def _ask(self, child: Child, rid: str, question: Measure | Forget) -> Event:
        """Send a question that is not a generation; its answer (`_QUESTION_S` at most)."""
        answer: asyncio.Queue[Event] = asyncio.Queue()
        self._answers[rid] = answer
        try:
            child.channel.send(question)
            event = await _next(answer, time.monotonic() + _QUESTION_S)
        finally:
            del self._answers[rid]
        if isinstance(event, InferenceError):
            raise event
        if isinstance(event, _Died):
            raise EngineUnavailable(f"the engine process stopped ({event.reason})")
        return event

    async def abort(self, request_id: str) -> None:
        child = self._child
        if child is not None and child.alive:
            child.channel.send(Abort(request_id))

    async def _ready_child(self, request: GenerationRequest) -> Child:
        if self._up is None or self._closing:
            raise EngineUnavailable(f"engine {self.model_id} is not running")
        if not self._up.is_set():
            wait = min(self._restart_wait_s, request.deadline_s or self._restart_wait_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._up.wait(), wait)
        child = self._child
        if child is None or not child.alive or not self._up.is_set():
            raise EngineOverloaded(
                f"the chat engine is restarting ({self._down_reason}); try again shortly",
                retry_after_s=max(1.0, self._backoff[0] * 4),
            )
        return child

    # --- the child process

    async def _prepare_model(self) -> None:
        """Decide the weights file and repacking here, once: the engine processes this
        one starts (again, after a crash) load that file and reuse the answer instead of
        converting or probing each time."""
        config = self.config
        if config.backend != "llamacpp" or config.model_path is None:
            return
        from inference.engines.llamacpp.repack import resolve_repack
        from inference.engines.llamacpp.weights import resolve_weights

        options = config.llamacpp
        path = await asyncio.to_thread(
            resolve_weights, options.weights, config.model_path, config.state_dir
        )
        config = dataclasses.replace(config.with_llamacpp(weights="as-is"), model_path=path)
        if options.repack == "auto":
            repack = await asyncio.to_thread(resolve_repack, "auto", path, config.state_dir)
            config = config.with_llamacpp(repack="on" if repack else "off")
        self.config = config

    async def _launch(self) -> None:
        child, pid = await spawn(self.config)
        child.reader = asyncio.create_task(self._read(child), name="engine-channel")
        self._heard = self._progressed = time.monotonic()
        self._work = (0, 0)
        self._child = child
        assert self._up is not None
        self._up.set()
        log.info("engine process ready", extra={"model": self.model_id, "pid": pid})

    async def _read(self, child: Child) -> None:
        while (message := await child.channel.receive()) is not None:
            self._dispatch(message)
        child.alive = False
        if self._up is not None:
            self._up.clear()  # new requests wait for the restart from now on

    def _dispatch(self, message: object) -> None:
        if isinstance(message, Delta | Done | Failed | Measured | Forgotten):
            rid = message.request_id
            queue = self._streams.get(rid) or self._answers.get(rid)
            if queue is not None:
                queue.put_nowait(_event_of(message))
        elif isinstance(message, Stats):
            self._note_progress(message.stats)
            self._stats = self._with_base(message.stats)
        elif isinstance(message, Observed) and self._observer is not None:
            self._observer.request_finished(
                message.model_id, message.finished, message.inter_token_s
            )

    def _note_progress(self, stats: EngineStats) -> None:
        now, work = time.monotonic(), (stats.prompt_tokens, stats.generated_tokens)
        self._heard = now
        if (stats.running == 0 and stats.waiting == 0) or work != self._work:
            self._progressed, self._work = now, work

    async def _watch(self, child: Child, every_s: float = 1.0) -> None:
        """Kill an engine process that stopped answering or stopped making progress with
        requests in hand (a wedged kernel, a stopped process); the supervisor restarts it."""
        while child.alive:
            await asyncio.sleep(every_s)
            now = time.monotonic()
            silent, stuck = now - self._heard, now - self._progressed
            if max(silent, stuck) > self._stall_s:
                log.error(
                    "engine process stalled; killing it",
                    extra={"model": self.model_id, "silent_s": silent, "stuck_s": stuck},
                )
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                return

    async def _supervise(self) -> None:
        backoff = self._backoff[0]
        while not self._closing:
            child = self._child
            assert child is not None and child.reader is not None
            watchdog = asyncio.create_task(self._watch(child), name="engine-watchdog")
            await child.reader
            watchdog.cancel()
            code = await child.process.wait()
            self._on_death(child, exit_text(code))
            if time.monotonic() - child.started > 60:
                backoff = self._backoff[0]
            while not self._closing:
                await asyncio.sleep(backoff)
                try:
                    await self._launch()
                    self.restarts += 1
                    break
                except (EngineUnavailable, OSError) as exc:
                    log.error("engine restart failed", extra={"error": str(exc)})
                    backoff = min(backoff * 2, self._backoff[1])

    def _on_death(self, child: Child, reason: str) -> None:
        assert self._up is not None
        self._up.clear()
        child.alive = False
        child.channel.close()
        self._down_reason = f"its process ended: {reason}"
        log.error("engine process ended; restarting", extra={"model": self.model_id, "why": reason})
        for name in _COUNTERS:
            self._base[name] = getattr(self._stats, name)
        self._stats = self._with_base(_empty_stats(self.model_id))
        self._fail_streams(_Died(reason))

    def _fail_streams(self, died: _Died) -> None:
        for queue in (*self._streams.values(), *self._answers.values()):
            queue.put_nowait(died)

    def _with_base(self, stats: EngineStats) -> EngineStats:
        totals = {name: self._base[name] + getattr(stats, name) for name in _COUNTERS}
        return dataclasses.replace(stats, **totals)


async def _next(queue: asyncio.Queue[Event], expires: float | None) -> Event:
    if expires is None:
        return await queue.get()
    try:
        return await asyncio.wait_for(queue.get(), max(0.0, expires - time.monotonic()))
    except TimeoutError:  # raised, not returned: the request is still in the engine (abort it)
        raise DeadlineExceeded(
            "the engine did not finish the request within its deadline"
        ) from None


def _event_of(message: Delta | Done | Failed | Measured | Forgotten) -> Event:
    if isinstance(message, Delta):
        return TextDelta(message.text)
    if isinstance(message, Done):
        return message.finished
    if isinstance(message, Measured):
        return message.size
    if isinstance(message, Forgotten):
        return None
    return error_of(message)


def _empty_stats(model_id: str) -> EngineStats:
    return EngineStats(model_id, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
