"""Service settings: read once from the environment and an optional TOML file, then validated.

Precedence, highest first: explicit overrides (CLI flags), environment
variables, the TOML file (``COMPANION_CONFIG`` or ``--config``), defaults.
The TOML file is one flat table whose keys are the setting names below
(``port = 8000``, ``database_url = "postgresql://..."``).

Every problem is collected before anything is raised, so an operator sees the
whole list at once: malformed values name the variable and what was expected,
and production mode adds its own refusals (see `production_problems`).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import platformdirs

from inference.config import ChatEngineConfig, VllmOptions
from memory.config import DatabaseConfig, RedisConfig

MIN_JWT_SECRET_BYTES = 32
CONFIG_FILE_VAR = "COMPANION_CONFIG"


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class SettingsError(Exception):
    """The configuration is unusable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(self.period_s)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period_s}s"


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole service configuration, typed. Build it with `load_settings`."""

    environment: Environment
    host: str
    port: int
    workers: int
    data_dir: Path
    database: DatabaseConfig
    redis: RedisConfig
    jwt_secret: str | None
    jwt_ttl_s: int
    cors_origins: tuple[str, ...]
    # Host headers served (Litestar's allowed-hosts check; `host_patterns` adds the port)
    allowed_hosts: tuple[str, ...]
    # peers whose X-Forwarded-For names the client (uvicorn's forwarded_allow_ips)
    trusted_proxies: tuple[str, ...]
    rate_limit_user: RateLimit
    rate_limit_ip: RateLimit
    rate_limits: bool
    rate_limit_routes: dict[str, RateLimit]
    max_message_chars: int
    max_concurrent_per_user: int  # generation requests in flight per user, all instances; 0: no cap
    user_loadable_models: tuple[str, ...]  # catalog models any user may make load ("*": all)
    idempotency_ttl_s: int
    sse_keepalive_s: float
    response_cache_ttl_s: int
    log_level: str
    log_format: str
    dev_header_auth: bool
    max_body_bytes: int
    chat_engine: ChatEngineConfig
    chat_small_model: Path | None
    model_memory_mb: int
    hf_endpoint: str
    api_keys_required: bool
    embedder: str
    embedder_threads: int
    embedder_runtime: str
    memory_worker: str
    memory_extract_every: int
    memory_job_concurrency: int
    session_ttl_s: int
    buffer_size: int
    content_judge: str  # "off", "chat" (the default chat model) or a catalog model id
    content_judge_deadline_s: float

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    @property
    def embedded_database(self) -> bool:
        return self.database.url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis.url is None

    def production_problems(self) -> list[str]:
        """Why this configuration must not run in production (empty when it may)."""
        problems = []
        if not self.jwt_secret:
            problems.append("COMPANION_JWT_SECRET: required in production")
        elif len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            problems.append(
                f"COMPANION_JWT_SECRET: must be at least {MIN_JWT_SECRET_BYTES} bytes in production"
            )
        if "*" in self.cors_origins:
            problems.append("COMPANION_CORS_ORIGINS: '*' is not allowed in production")
        if self.dev_header_auth:
            problems.append("COMPANION_DEV_HEADER_AUTH: development header auth is refused")
        if not self.api_keys_required:
            problems.append("COMPANION_API_KEYS_REQUIRED: API keys are required in production")
        if self.embedded_database:
            problems.append("DATABASE_URL: required in production (no embedded PostgreSQL)")
        if self.embedded_redis:
            problems.append("REDIS_URL: required in production (no embedded Redis)")
        return problems

    def describe(self) -> dict[str, str]:
        """The effective settings as text, secrets masked (for `companion doctor`)."""
        return {
            "environment": self.environment.value,
            "host": self.host,
            "port": str(self.port),
            "workers": str(self.workers),
            "data_dir": str(self.data_dir),
            "database_url": mask_url(self.database.url) if self.database.url else "(embedded)",
            "database_pool": f"{self.database.pool_min}..{self.database.pool_max}",
            "redis_url": mask_url(self.redis.url) if self.redis.url else "(embedded)",
            "redis_max_connections": str(self.redis.max_connections),
            "jwt_secret": "(set, masked)" if self.jwt_secret else "(not set)",
            "jwt_ttl_s": str(self.jwt_ttl_s),
            "cors_origins": ",".join(self.cors_origins) or "(none)",
            "allowed_hosts": ",".join(self.allowed_hosts),
            "trusted_proxies": ",".join(self.trusted_proxies) or "(none)",
            "rate_limit_user": str(self.rate_limit_user),
            "rate_limit_ip": str(self.rate_limit_ip),
            "rate_limits": "on" if self.rate_limits else "off",
            "rate_limit_routes": ",".join(f"{k}={v}" for k, v in self.rate_limit_routes.items()),
            "max_message_chars": str(self.max_message_chars),
            "max_concurrent_per_user": str(self.max_concurrent_per_user or "(no cap)"),
            "user_loadable_models": ",".join(self.user_loadable_models) or "(admins only)",
            "response_cache_ttl_s": str(self.response_cache_ttl_s),
            "log_level": self.log_level,
            "log_format": self.log_format,
            "dev_header_auth": str(self.dev_header_auth).lower(),
            "max_body_bytes": str(self.max_body_bytes),
            "api_keys_required": str(self.api_keys_required).lower(),
            "embedder": self.embedder,
            "embedder_runtime": f"{self.embedder_runtime}, {self.embedder_threads} threads",
            "memory_worker": self.memory_worker,
            "session_ttl_s": str(self.session_ttl_s),
            "buffer_size": str(self.buffer_size),
            "chat_engine": self.chat_engine.backend,
            "chat_model": str(self.chat_engine.model_path or "(packaged default)"),
            "chat_small_model": str(self.chat_small_model or "(none)"),
            "chat_kv": f"{self.chat_engine.n_ctx} cells, {self.chat_engine.n_slots} slots",
            "model_memory_mb": str(self.model_memory_mb or "(half the machine's memory)"),
            "content_judge": f"{self.content_judge}, {self.content_judge_deadline_s:g} s deadline",
        }


def mask_url(url: str) -> str:
    """Replace the password of a URL with ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


# --- parsers: each takes a raw value (str from the environment, or a TOML value)
# and returns the typed value, raising ValueError("expected ...") when malformed.


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw.strip()


def _optional_text(raw: object) -> str | None:
    return _text(raw) or None


def _integer(low: int, high: int) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        try:
            value = int(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def _seconds(raw: object) -> float:
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else -1.0
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError("expected a positive number of seconds")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _fraction(raw: object) -> float:
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else -1.0
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError("expected a number in (0, 1]")
    return value


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("expected true or false")


def _optional_boolean(raw: object) -> bool | None:
    return None if str(raw).strip() == "" else _boolean(raw)


def _choice(*options: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        text = str(raw).strip().lower()
        if text not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return text

    return parse


def _environment(raw: object) -> Environment:
    return Environment(_choice(*(e.value for e in Environment))(raw))


def _url(*schemes: str) -> Callable[[object], str | None]:
    def parse(raw: object) -> str | None:
        text = _text(raw)
        if not text:
            return None
        if urlsplit(text).scheme not in schemes:
            raise ValueError(
                "expected a URL starting with " + " or ".join(f"{s}://" for s in schemes)
            )
        return text

    return parse


def _hosts(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        if not re.fullmatch(r"\*|(\*\.)?[a-z0-9.\-]+(:\d+)?|\[[0-9a-f:]+\](:\d+)?", host):
            raise ValueError("expected '*' or comma-separated host names like chat.example.com")
    return hosts


def _names(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def _networks(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    networks = tuple(str(item).strip() for item in items if str(item).strip())
    for network in networks:
        if network != "*":
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    "expected '*' or comma-separated addresses or networks like 10.0.0.0/8"
                ) from None
    return networks


def _origins(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError("expected '*' or comma-separated origins like https://example.com")
    return origins


_PERIODS = {"s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}


def _urls(raw: object) -> tuple[str, ...]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    if any(urlsplit(url).scheme not in ("http", "https") for url in urls):
        raise ValueError("expected comma-separated http(s) base URLs like http://gpu1:8000/v1")
    return urls


def _rate(raw: object) -> RateLimit:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", str(raw).lower())
    if not match or match[2] not in _PERIODS or int(match[1]) < 1:
        raise ValueError("expected a rate like 60/minute (second, minute, hour or day)")
    return RateLimit(int(match[1]), _PERIODS[match[2]])


def _route_rates(raw: object) -> dict[str, RateLimit]:
    items = raw.items() if isinstance(raw, dict) else _pairs(str(raw))
    rates = {}
    for group, rate in items:
        if not re.fullmatch(r"[a-z0-9_]+", str(group)):
            raise ValueError("expected group=rate pairs like turn=30/minute,auth=10/minute")
        rates[str(group)] = _rate(rate)
    return rates


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        group, sep, rate = item.partition("=")
        if not sep:
            raise ValueError("expected group=rate pairs like turn=30/minute,auth=10/minute")
        pairs.append((group.strip(), rate.strip()))
    return pairs


def _path(raw: object) -> Path:
    text = _text(raw)
    if not text:
        raise ValueError("expected a directory path")
    return Path(text).expanduser().resolve()


def _optional_model(raw: object) -> Path | None:
    """A model file (GGUF) or a Hugging Face model directory (vLLM)."""
    text = _text(raw)
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ValueError("expected a model file or a model directory with a config.json")
    return path


def _judge(raw: object) -> str:
    """``off``, ``chat`` (the default chat model) or a catalog model's id, which is
    checked against the catalog when the models open (`server.models_setup`)."""
    text = _text(raw)
    keyword = text.lower() or "off"
    return keyword if keyword in ("off", "chat") else text


def _model_id(path: Path | None) -> str:
    if path is None:
        return "smollm2-135m-instruct"
    return path.name if path.is_dir() else path.stem


def _optional_file(raw: object) -> Path | None:
    text = _text(raw)
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise ValueError("expected the path of an existing model file")
    return path


@dataclass(frozen=True, slots=True)
class _Field:
    key: str  # setting name, also the TOML key
    env: str
    parse: Callable[[object], Any]
    default: object
    secret: bool = False


_FIELDS: tuple[_Field, ...] = (
    _Field("environment", "COMPANION_ENV", _environment, "development"),
    _Field("host", "COMPANION_HOST", _text, "127.0.0.1"),
    _Field("port", "COMPANION_PORT", _integer(1, 65535), 8000),
    _Field("workers", "COMPANION_WORKERS", _integer(1, 64), 1),
    _Field("data_dir", "COMPANION_DATA_DIR", _path, platformdirs.user_data_dir("companion")),
    _Field("database_url", "DATABASE_URL", _url("postgresql", "postgres"), "", secret=True),
    _Field("database_pool_min", "COMPANION_DATABASE_POOL_MIN", _integer(0, 1000), 2),
    # 0: twice this machine's cores, at least 4 (`default_pool_max`)
    _Field("database_pool_max", "COMPANION_DATABASE_POOL_MAX", _integer(0, 1000), 0),
    _Field("database_timeout_s", "COMPANION_DATABASE_TIMEOUT", _seconds, 30.0),
    _Field("migrate_on_start", "COMPANION_MIGRATE_ON_START", _boolean, True),
    _Field("redis_url", "REDIS_URL", _url("redis", "rediss", "unix"), "", secret=True),
    _Field("redis_max_connections", "COMPANION_REDIS_MAX_CONNECTIONS", _integer(1, 10000), 100),
    _Field("jwt_secret", "COMPANION_JWT_SECRET", _optional_text, "", secret=True),
    _Field("jwt_ttl_s", "COMPANION_JWT_TTL", _integer(60, 30 * 86400), 86400),
    _Field("cors_origins", "COMPANION_CORS_ORIGINS", _origins, ""),
    # Unset: nobody; the peer's address is the client's.
    _Field("trusted_proxies", "COMPANION_TRUSTED_PROXIES", _networks, ""),
    # Unset: this machine's loopback names when bound to loopback, else any.
    _Field("allowed_hosts", "COMPANION_ALLOWED_HOSTS", _hosts, ""),
    _Field("rate_limit_user", "COMPANION_RATE_LIMIT_USER", _rate, "60/minute"),
    _Field("rate_limit_ip", "COMPANION_RATE_LIMIT_IP", _rate, "120/minute"),
    _Field("rate_limits", "COMPANION_RATE_LIMITS", _boolean, True),
    _Field(
        "rate_limit_routes",
        "COMPANION_RATE_LIMIT_ROUTES",
        _route_rates,
        "turn=30/minute,auth=10/minute",
    ),
    _Field("max_message_chars", "COMPANION_MAX_MESSAGE_CHARS", _integer(1, 1_000_000), 8000),
    _Field("max_concurrent_per_user", "COMPANION_MAX_CONCURRENT_PER_USER", _integer(0, 10_000), 4),
    _Field("user_loadable_models", "COMPANION_USER_LOADABLE_MODELS", _names, ""),
    _Field("idempotency_ttl_s", "COMPANION_IDEMPOTENCY_TTL", _integer(60, 30 * 86400), 86400),
    _Field("sse_keepalive_s", "COMPANION_SSE_KEEPALIVE", _seconds, 15.0),
    _Field("response_cache_ttl_s", "COMPANION_RESPONSE_CACHE_TTL", _integer(0, 30 * 86400), 3600),
    _Field(
        "log_level", "COMPANION_LOG_LEVEL", _choice("debug", "info", "warning", "error"), "info"
    ),
    _Field("log_format", "COMPANION_LOG_FORMAT", _choice("json", "console"), "json"),
    _Field("dev_header_auth", "COMPANION_DEV_HEADER_AUTH", _boolean, False),
    _Field("max_body_bytes", "COMPANION_MAX_BODY_BYTES", _integer(1024, 1 << 30), 1 << 20),
    _Field(
        "chat_engine",
        "COMPANION_CHAT_ENGINE",
        _choice("llamacpp", "vllm", "auto", "remote", "none"),
        "auto",
    ),
    _Field("chat_model", "COMPANION_CHAT_MODEL", _optional_model, ""),
    _Field("chat_small_model", "COMPANION_CHAT_SMALL_MODEL", _optional_file, ""),
    _Field("chat_ctx", "COMPANION_CHAT_CTX", _integer(256, 1 << 20), 8192),
    _Field("chat_slots", "COMPANION_CHAT_SLOTS", _integer(1, 256), 16),
    _Field("chat_threads", "COMPANION_CHAT_THREADS", _integer(0, 512), 0),
    _Field("chat_nice", "COMPANION_CHAT_NICE", _integer(0, 19), 10),
    _Field("chat_prefill_chunk", "COMPANION_CHAT_PREFILL_CHUNK", _integer(8, 8192), 128),
    _Field("chat_max_waiting", "COMPANION_CHAT_MAX_WAITING", _integer(1, 100_000), 256),
    _Field("host_kv_cache_mb", "COMPANION_HOST_KV_CACHE_MB", _integer(0, 1 << 20), 512),
    _Field("chat_deadline_s", "COMPANION_CHAT_DEADLINE", _integer(0, 86400), 600),
    _Field("chat_repack", "COMPANION_CHAT_REPACK", _choice("auto", "on", "off"), "auto"),
    _Field("chat_process", "COMPANION_CHAT_PROCESS", _choice("separate", "inline"), "separate"),
    _Field("chat_remote_urls", "COMPANION_CHAT_REMOTE_URLS", _urls, ""),
    _Field("chat_remote_model", "COMPANION_CHAT_REMOTE_MODEL", _text, ""),
    _Field("chat_remote_key", "COMPANION_CHAT_REMOTE_KEY", _optional_text, "", secret=True),
    _Field(
        "chat_remote_flavor", "COMPANION_CHAT_REMOTE_FLAVOR", _choice("openai", "vllm"), "openai"
    ),
    _Field("chat_remote_kv_full", "COMPANION_CHAT_REMOTE_KV_FULL", _fraction, 0.98),
    _Field("chat_remote_max_waiting", "COMPANION_CHAT_REMOTE_MAX_WAITING", _integer(0, 100_000), 8),
    _Field("vllm_kv_cache_mb", "COMPANION_VLLM_KV_CACHE_MB", _integer(0, 1 << 22), 1024),
    _Field("vllm_gpu_memory", "COMPANION_VLLM_GPU_MEMORY", _fraction, 0.85),
    _Field(
        "vllm_dtype",
        "COMPANION_VLLM_DTYPE",
        _choice("auto", "bfloat16", "float16", "float32"),
        "auto",
    ),
    _Field("vllm_eager", "COMPANION_VLLM_EAGER", _boolean, True),
    _Field("vllm_cache_scope", "COMPANION_VLLM_CACHE_SCOPE", _choice("user", "shared"), "user"),
    _Field("model_memory_mb", "COMPANION_MODEL_MEMORY_MB", _integer(0, 1 << 30), 0),
    _Field("hf_endpoint", "HF_ENDPOINT", _url("http", "https"), "https://huggingface.co"),
    _Field("memory_worker", "COMPANION_MEMORY_WORKER", _choice("inprocess", "off"), "inprocess"),
    _Field("memory_extract_every", "COMPANION_MEMORY_EXTRACT_EVERY", _integer(1, 100), 1),
    _Field("memory_job_concurrency", "COMPANION_MEMORY_JOB_CONCURRENCY", _integer(1, 64), 2),
    _Field("session_ttl_s", "COMPANION_SESSION_TTL", _integer(60, 30 * 86400), 86400),
    _Field("buffer_size", "COMPANION_BUFFER_SIZE", _integer(2, 1000), 40),
    # Off: the packaged 135M model judges worse than the prototypes (docs/understanding.md)
    _Field("content_judge", "COMPANION_CONTENT_JUDGE", _judge, "off"),
    _Field("content_judge_deadline_s", "COMPANION_CONTENT_JUDGE_DEADLINE", _seconds, 5.0),
    _Field("embedder", "COMPANION_EMBEDDER", _choice("minilm", "none"), "minilm"),
    _Field("embedder_threads", "COMPANION_EMBEDDER_THREADS", _integer(0, 256), 1),
    _Field("embedder_runtime", "COMPANION_EMBEDDER_RUNTIME", _choice("onnx", "torch"), "onnx"),
    # Unset: required, except in development on a loopback address (LM Studio-style).
    _Field("api_keys_required", "COMPANION_API_KEYS_REQUIRED", _optional_boolean, ""),
)
_BY_KEY = {field.key: field for field in _FIELDS}

# The table of settings for the README and `companion doctor`.
SETTINGS_TABLE = tuple((f.env, f.key, f.default) for f in _FIELDS)


def load_settings(
    env: Mapping[str, str] | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, object] | None = None,
    *,
    check_production: bool = True,
) -> Settings:
    """Read, parse and validate the settings; raise `SettingsError` listing every problem.

    ``check_production=False`` skips the production refusals (for `companion doctor`,
    which reports them instead of refusing).
    """
    env = os.environ if env is None else env
    problems: list[str] = []
    file_values = _read_config_file(config_file or _config_path(env), problems)
    values: dict[str, Any] = {}
    for field in _FIELDS:
        raw, source = _raw_value(field, env, file_values, overrides or {})
        try:
            values[field.key] = field.parse(raw)
        except ValueError as exc:
            shown = "" if field.secret else f", got {raw!r}"
            problems.append(f"{source}: {exc}{shown}")
    if not problems:
        problems.extend(_cross_field_problems(values))
    settings = _build(values) if not problems else None
    if settings is not None and settings.is_production and check_production:
        problems.extend(settings.production_problems())
    if problems or settings is None:
        raise SettingsError(problems)
    return settings


def _config_path(env: Mapping[str, str]) -> Path | None:
    path = env.get(CONFIG_FILE_VAR, "").strip()
    return Path(path).expanduser() if path else None


def _read_config_file(path: Path | None, problems: list[str]) -> dict[str, object]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append(f"{CONFIG_FILE_VAR}: cannot read {path}: {exc.strerror}")
        return {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{CONFIG_FILE_VAR}: {path} is not valid TOML: {exc}")
        return {}
    unknown = sorted(set(data) - set(_BY_KEY))
    if unknown:
        problems.append(f"{path}: unknown settings {', '.join(unknown)}")
    return {key: value for key, value in data.items() if key in _BY_KEY}


def _raw_value(
    field: _Field,
    env: Mapping[str, str],
    file_values: Mapping[str, object],
    overrides: Mapping[str, object],
) -> tuple[object, str]:
    if overrides.get(field.key) is not None:
        return overrides[field.key], f"--{field.key.replace('_', '-')}"
    if field.env in env:
        return env[field.env], field.env
    if field.key in file_values:
        return file_values[field.key], f"{field.key} (config file)"
    return field.default, f"{field.env} (default)"


def default_pool_max() -> int:
    """Connections per worker when not configured: twice the cores, at least 4.

    PostgreSQL does a query's work on a core: past about two busy backends per
    core they only take turns, each query waits longer, and a burst of chat
    turns gets slower, not faster. Measured with scripts/bench_chat.py on the
    2-core VM (embedded PostgreSQL on the same cores): 8 turns arriving at
    once took 46-67 ms before their first token with at most 4 connections,
    78-104 ms with at most 20 (docs/chat-api.md). A query that finds every
    connection busy waits in the pool for the next one instead, which costs
    it less.
    """
    return max(4, 2 * len(os.sched_getaffinity(0)))


def host_patterns(settings: Settings) -> list[str]:
    """The Host headers to accept: each allowed host alone (default ports) and with ours."""
    if "*" in settings.allowed_hosts:
        return ["*"]
    return [form for host in settings.allowed_hosts for form in _with_port(host, settings.port)]


def _with_port(host: str, port: int) -> tuple[str, ...]:
    has_port = host.rsplit("]", 1)[-1].count(":") == 1
    return (host,) if has_port else (host, f"{host}:{port}")


def _cross_field_problems(values: dict[str, Any]) -> list[str]:
    problems = []
    if not values["database_pool_max"]:
        values["database_pool_max"] = default_pool_max()
    if values["database_pool_min"] > values["database_pool_max"]:
        problems.append("COMPANION_DATABASE_POOL_MIN: must not exceed COMPANION_DATABASE_POOL_MAX")
    if values["chat_engine"] == "remote" and not values["chat_remote_urls"]:
        problems.append("COMPANION_CHAT_REMOTE_URLS: required when COMPANION_CHAT_ENGINE=remote")
    loopback = values["host"] in _LOOPBACK_HOSTS
    development = values["environment"] is Environment.DEVELOPMENT
    if not values["allowed_hosts"]:
        # A page that DNS-rebinds its name to 127.0.0.1 must not reach a loopback server
        values["allowed_hosts"] = ("127.0.0.1", "localhost", "[::1]") if loopback else ("*",)
    if values["dev_header_auth"] and not loopback:
        problems.append(
            "COMPANION_DEV_HEADER_AUTH: only when bound to a loopback address (anyone who can"
            " reach the port could claim to be any user)"
        )
    if values["api_keys_required"] is None:
        values["api_keys_required"] = not (development and loopback)
    elif not values["api_keys_required"] and not loopback:
        problems.append(
            "COMPANION_API_KEYS_REQUIRED: keys may be off only when bound to a loopback address"
        )
    return problems


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _build(values: Mapping[str, Any]) -> Settings:
    return Settings(
        environment=values["environment"],
        host=values["host"],
        port=values["port"],
        workers=values["workers"],
        data_dir=values["data_dir"],
        database=DatabaseConfig(
            url=values["database_url"],
            pool_min=values["database_pool_min"],
            pool_max=values["database_pool_max"],
            command_timeout_s=values["database_timeout_s"],
            migrate_on_start=values["migrate_on_start"],
        ),
        redis=RedisConfig(url=values["redis_url"], max_connections=values["redis_max_connections"]),
        jwt_secret=values["jwt_secret"],
        jwt_ttl_s=values["jwt_ttl_s"],
        cors_origins=values["cors_origins"],
        allowed_hosts=values["allowed_hosts"],
        trusted_proxies=values["trusted_proxies"],
        rate_limit_user=values["rate_limit_user"],
        rate_limit_ip=values["rate_limit_ip"],
        rate_limits=values["rate_limits"],
        rate_limit_routes=values["rate_limit_routes"],
        max_message_chars=values["max_message_chars"],
        max_concurrent_per_user=values["max_concurrent_per_user"],
        user_loadable_models=values["user_loadable_models"],
        idempotency_ttl_s=values["idempotency_ttl_s"],
        sse_keepalive_s=values["sse_keepalive_s"],
        response_cache_ttl_s=values["response_cache_ttl_s"],
        log_level=values["log_level"],
        log_format=values["log_format"],
        dev_header_auth=values["dev_header_auth"],
        max_body_bytes=values["max_body_bytes"],
        api_keys_required=values["api_keys_required"],
        embedder=values["embedder"],
        embedder_threads=values["embedder_threads"],
        embedder_runtime=values["embedder_runtime"],
        memory_worker=values["memory_worker"],
        memory_extract_every=values["memory_extract_every"],
        memory_job_concurrency=values["memory_job_concurrency"],
        chat_small_model=values["chat_small_model"],
        model_memory_mb=values["model_memory_mb"],
        hf_endpoint=values["hf_endpoint"] or "https://huggingface.co",
        session_ttl_s=values["session_ttl_s"],
        buffer_size=values["buffer_size"],
        content_judge=values["content_judge"],
        content_judge_deadline_s=values["content_judge_deadline_s"],
        chat_engine=ChatEngineConfig(
            backend=values["chat_engine"],
            model_path=values["chat_model"],
            # a model given by path is served under its file (or directory) name
            model_id=_model_id(values["chat_model"]),
            n_ctx=values["chat_ctx"],
            n_slots=values["chat_slots"],
            n_threads=values["chat_threads"],
            nice=values["chat_nice"],
            prefill_chunk=values["chat_prefill_chunk"],
            max_waiting=values["chat_max_waiting"],
            host_cache_bytes=values["host_kv_cache_mb"] << 20,
            repack=values["chat_repack"],
            deadline_s=float(values["chat_deadline_s"]),
            process=values["chat_process"],
            state_dir=values["data_dir"] / "engines",
            remote_urls=values["chat_remote_urls"],
            remote_model=values["chat_remote_model"],
            remote_api_key=values["chat_remote_key"],
            remote_flavor=values["chat_remote_flavor"],
            remote_kv_full=values["chat_remote_kv_full"],
            remote_max_waiting=values["chat_remote_max_waiting"],
            vllm=VllmOptions(
                kv_cache_mb=values["vllm_kv_cache_mb"],
                gpu_memory_utilization=values["vllm_gpu_memory"],
                dtype=values["vllm_dtype"],
                eager=values["vllm_eager"],
                cache_scope=values["vllm_cache_scope"],
            ),
        ),
    )
