"""The table of settings: each one's name, environment variable, parser and default.

`server.settings` reads the environment and the config file through this
table and builds the typed `Settings`; the parsers are `server.settings_parse`.

ARCHITECTURE: a setting that configures another package's dataclass takes its
default from that dataclass (`inference.config`, `memory.config`...), so each
default is written once; the README documents this table (`SETTINGS_TABLE`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import platformdirs

from inference.config import ChatEngineConfig
from memory.buffer import BufferConfig
from memory.config import DatabaseConfig, RedisConfig
from memory.session import SessionConfig
from server import settings_parse as parse

# The defaults the table takes from the configs it fills (each written once, there).
_ENGINE = ChatEngineConfig()
_DATABASE = DatabaseConfig()
_REDIS = RedisConfig()


@dataclass(frozen=True, slots=True)
class Field:
    """One setting: its name, where it is read from, how it is parsed, its default."""

    key: str  # setting name, also the TOML key
    env: str
    parse: Callable[[object], Any]
    default: object
    secret: bool = False
    # where the value goes in the chat engine's config: "n_ctx", "llamacpp.nice"... ("": not
    # there, or built by hand in `server.settings`)
    engine: str = ""


_FROM_ENGINE = object()


def _engine_field(
    key: str,
    env: str,
    parse: Callable[[object], Any],
    engine: str,
    default: object = _FROM_ENGINE,
    *,
    secret: bool = False,
) -> Field:
    """A row that sets ``engine`` (a `ChatEngineConfig` field, or one of its option structs'),
    with that field's default unless the raw ``default`` is given (where the typed default
    is not a valid raw value, as an empty tuple of URLs is not)."""
    if default is _FROM_ENGINE:
        default = engine_default(engine)
    return Field(key, env, parse, default, secret, engine)


def engine_default(path: str) -> object:
    """The default of ``path`` ("n_ctx", "llamacpp.nice"...) in `ChatEngineConfig`."""
    value: object = _ENGINE
    for name in path.split("."):
        value = getattr(value, name)
    return value


FIELDS: tuple[Field, ...] = (
    Field("environment", "COMPANION_ENV", parse.environment, "development"),
    Field("host", "COMPANION_HOST", parse.string, "127.0.0.1"),
    Field("port", "COMPANION_PORT", parse.integer(1, 65535), 8000),
    Field("workers", "COMPANION_WORKERS", parse.integer(1, 64), 1),
    Field(
        "data_dir", "COMPANION_DATA_DIR", parse.directory, platformdirs.user_data_dir("companion")
    ),
    Field("database_url", "DATABASE_URL", parse.url("postgresql", "postgres"), "", secret=True),
    Field(
        "database_pool_min",
        "COMPANION_DATABASE_POOL_MIN",
        parse.integer(0, 1000),
        _DATABASE.pool_min,
    ),
    # 0: twice this machine's cores, at least 4 (`default_pool_max`)
    Field("database_pool_max", "COMPANION_DATABASE_POOL_MAX", parse.integer(0, 1000), 0),
    Field(
        "database_timeout_s",
        "COMPANION_DATABASE_TIMEOUT",
        parse.seconds,
        _DATABASE.command_timeout_s,
    ),
    Field(
        "migrate_on_start", "COMPANION_MIGRATE_ON_START", parse.boolean, _DATABASE.migrate_on_start
    ),
    Field("redis_url", "REDIS_URL", parse.url("redis", "rediss", "unix"), "", secret=True),
    Field(
        "redis_max_connections",
        "COMPANION_REDIS_MAX_CONNECTIONS",
        parse.integer(1, 10000),
        _REDIS.max_connections,
    ),
    Field("jwt_secret", "COMPANION_JWT_SECRET", parse.optional_text, "", secret=True),
    Field("jwt_ttl_s", "COMPANION_JWT_TTL", parse.integer(60, 30 * 86400), 86400),
    Field("cors_origins", "COMPANION_CORS_ORIGINS", parse.origins, ""),
    # Unset: nobody; the peer's address is the client's.
    Field("trusted_proxies", "COMPANION_TRUSTED_PROXIES", parse.networks, ""),
    # Unset: this machine's loopback names when bound to loopback, else any.
    Field("allowed_hosts", "COMPANION_ALLOWED_HOSTS", parse.hosts, ""),
    Field("rate_limit_user", "COMPANION_RATE_LIMIT_USER", parse.rate, "60/minute"),
    Field("rate_limit_ip", "COMPANION_RATE_LIMIT_IP", parse.rate, "120/minute"),
    Field("rate_limits", "COMPANION_RATE_LIMITS", parse.boolean, True),
    Field(
        "rate_limit_routes",
        "COMPANION_RATE_LIMIT_ROUTES",
        parse.route_rates,
        "turn=30/minute,auth=10/minute",
    ),
    Field("max_message_chars", "COMPANION_MAX_MESSAGE_CHARS", parse.integer(1, 1_000_000), 8000),
    Field(
        "max_concurrent_per_user", "COMPANION_MAX_CONCURRENT_PER_USER", parse.integer(0, 10_000), 4
    ),
    Field("user_loadable_models", "COMPANION_USER_LOADABLE_MODELS", parse.names, ""),
    Field("idempotency_ttl_s", "COMPANION_IDEMPOTENCY_TTL", parse.integer(60, 30 * 86400), 86400),
    Field("sse_keepalive_s", "COMPANION_SSE_KEEPALIVE", parse.seconds, 15.0),
    Field(
        "response_cache_ttl_s", "COMPANION_RESPONSE_CACHE_TTL", parse.integer(0, 30 * 86400), 3600
    ),
    Field(
        "log_level",
        "COMPANION_LOG_LEVEL",
        parse.choice("debug", "info", "warning", "error"),
        "info",
    ),
    Field("log_format", "COMPANION_LOG_FORMAT", parse.choice("json", "console"), "json"),
    Field("dev_header_auth", "COMPANION_DEV_HEADER_AUTH", parse.boolean, False),
    Field("max_body_bytes", "COMPANION_MAX_BODY_BYTES", parse.integer(1024, 1 << 30), 1 << 20),
    Field(
        "chat_engine",
        "COMPANION_CHAT_ENGINE",
        parse.choice("llamacpp", "vllm", "auto", "remote", "none"),
        "auto",
    ),
    Field("chat_model", "COMPANION_CHAT_MODEL", parse.optional_model, ""),
    Field("chat_small_model", "COMPANION_CHAT_SMALL_MODEL", parse.optional_file, ""),
    _engine_field(
        "chat_ctx", "COMPANION_CHAT_CTX", parse.zero_or(parse.integer(256, 1 << 20)), "n_ctx"
    ),
    _engine_field("chat_slots", "COMPANION_CHAT_SLOTS", parse.integer(1, 256), "n_slots"),
    _engine_field(
        "chat_threads", "COMPANION_CHAT_THREADS", parse.integer(0, 512), "llamacpp.n_threads"
    ),
    _engine_field("chat_nice", "COMPANION_CHAT_NICE", parse.integer(0, 19), "llamacpp.nice"),
    _engine_field(
        "chat_itl_target_ms",
        "COMPANION_CHAT_ITL_TARGET_MS",
        parse.integer(0, 60_000),
        "llamacpp.itl_target_ms",
    ),
    _engine_field(
        "chat_prefill_chunk",
        "COMPANION_CHAT_PREFILL_CHUNK",
        parse.integer(8, 8192),
        "llamacpp.prefill_chunk",
    ),
    _engine_field(
        "chat_kv_layout",
        "COMPANION_CHAT_KV_LAYOUT",
        parse.choice("auto", "unified", "per_slot"),
        "llamacpp.kv_layout",
    ),
    _engine_field(
        "chat_max_waiting", "COMPANION_CHAT_MAX_WAITING", parse.integer(1, 100_000), "max_waiting"
    ),
    # in MB here, in bytes in the engine's config (`settings._chat_engine`)
    Field(
        "host_kv_cache_mb",
        "COMPANION_HOST_KV_CACHE_MB",
        parse.integer(0, 1 << 20),
        _ENGINE.llamacpp.host_cache_bytes >> 20,
    ),
    # whole seconds here, a float in the engine's config
    Field(
        "chat_deadline_s",
        "COMPANION_CHAT_DEADLINE",
        parse.integer(0, 86400),
        int(_ENGINE.deadline_s),
    ),
    _engine_field(
        "chat_repack", "COMPANION_CHAT_REPACK", parse.choice("auto", "on", "off"), "llamacpp.repack"
    ),
    _engine_field(
        "chat_weights",
        "COMPANION_CHAT_WEIGHTS",
        parse.choice("auto", "as-is", "q8_0"),
        "llamacpp.weights",
    ),
    _engine_field(
        "chat_process", "COMPANION_CHAT_PROCESS", parse.choice("separate", "inline"), "process"
    ),
    _engine_field(
        "chat_remote_urls", "COMPANION_CHAT_REMOTE_URLS", parse.urls, "remote.base_urls", ""
    ),
    _engine_field(
        "chat_remote_model", "COMPANION_CHAT_REMOTE_MODEL", parse.string, "remote.upstream_model"
    ),
    _engine_field(
        "chat_remote_key",
        "COMPANION_CHAT_REMOTE_KEY",
        parse.optional_text,
        "remote.api_key",
        "",
        secret=True,
    ),
    _engine_field(
        "chat_remote_flavor",
        "COMPANION_CHAT_REMOTE_FLAVOR",
        parse.choice("openai", "vllm"),
        "remote.flavor",
    ),
    _engine_field(
        "chat_remote_kv_full", "COMPANION_CHAT_REMOTE_KV_FULL", parse.fraction, "remote.kv_full"
    ),
    _engine_field(
        "chat_remote_max_waiting",
        "COMPANION_CHAT_REMOTE_MAX_WAITING",
        parse.integer(0, 100_000),
        "remote.max_waiting",
    ),
    _engine_field(
        "vllm_kv_cache_mb",
        "COMPANION_VLLM_KV_CACHE_MB",
        parse.integer(0, 1 << 22),
        "vllm.kv_cache_mb",
    ),
    _engine_field(
        "vllm_gpu_memory",
        "COMPANION_VLLM_GPU_MEMORY",
        parse.fraction,
        "vllm.gpu_memory_utilization",
    ),
    _engine_field(
        "vllm_dtype",
        "COMPANION_VLLM_DTYPE",
        parse.choice("auto", "bfloat16", "float16", "float32"),
        "vllm.dtype",
    ),
    _engine_field("vllm_eager", "COMPANION_VLLM_EAGER", parse.boolean, "vllm.eager"),
    _engine_field(
        "vllm_cache_scope",
        "COMPANION_VLLM_CACHE_SCOPE",
        parse.choice("user", "shared"),
        "vllm.cache_scope",
    ),
    Field("model_memory_mb", "COMPANION_MODEL_MEMORY_MB", parse.integer(0, 1 << 30), 0),
    Field("hf_endpoint", "HF_ENDPOINT", parse.url("http", "https"), "https://huggingface.co"),
    Field(
        "memory_worker", "COMPANION_MEMORY_WORKER", parse.choice("inprocess", "off"), "inprocess"
    ),
    Field("memory_extract_every", "COMPANION_MEMORY_EXTRACT_EVERY", parse.integer(1, 100), 1),
    Field("memory_job_concurrency", "COMPANION_MEMORY_JOB_CONCURRENCY", parse.integer(1, 64), 2),
    # The model the memory jobs ask (extraction, summaries, profile, consolidation):
    # "chat" or a catalog model id (docs/memory.md, "Extraction, measured")
    Field("memory_model", "COMPANION_MEMORY_MODEL", parse.chat_or_model, "chat"),
    Field(
        "session_ttl_s",
        "COMPANION_SESSION_TTL",
        parse.integer(60, 30 * 86400),
        SessionConfig().ttl_s,
    ),
    Field("buffer_size", "COMPANION_BUFFER_SIZE", parse.integer(2, 1000), BufferConfig().size),
    # Off: the packaged 135M model judges worse than the prototypes (docs/understanding.md)
    Field("content_judge", "COMPANION_CONTENT_JUDGE", parse.judge, "off"),
    Field("content_judge_deadline_s", "COMPANION_CONTENT_JUDGE_DEADLINE", parse.seconds, 5.0),
    Field("embedder", "COMPANION_EMBEDDER", parse.choice("minilm", "none"), "minilm"),
    Field("embedder_threads", "COMPANION_EMBEDDER_THREADS", parse.integer(0, 256), 1),
    Field("embedder_runtime", "COMPANION_EMBEDDER_RUNTIME", parse.choice("onnx", "torch"), "onnx"),
    # Unset: required, except in development on a loopback address (LM Studio-style).
    Field("api_keys_required", "COMPANION_API_KEYS_REQUIRED", parse.optional_boolean, ""),
)
BY_KEY = {field.key: field for field in FIELDS}

# The table of settings for the README and `companion doctor`.
SETTINGS_TABLE = tuple((f.env, f.key, f.default) for f in FIELDS)
