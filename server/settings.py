"""Service settings: read once from the environment and an optional TOML file, then validated.

Precedence, highest first: explicit overrides (CLI flags), environment
variables, the TOML file (``COMPANION_CONFIG`` or ``--config``), defaults.
The TOML file is one flat table whose keys are the setting names below
(``port = 8000``, ``database_url = "postgresql://..."``).

Every problem is collected before anything is raised, so an operator sees the
whole list at once: malformed values name the variable and what was expected,
and production mode adds its own refusals (see `production_problems`).

ARCHITECTURE: the table of settings (names, variables, parsers, defaults)
is `server.settings_fields`; this module reads values through it, checks
the ones that depend on each other, and builds `Settings` with each
package's config inside: `DatabaseConfig`, `RedisConfig`, and the chat
engine's `ChatEngineConfig` with its backends' options
(`LlamaCppOptions`, `RemoteOptions`, `VllmOptions`).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from inference.config import ChatEngineConfig, LlamaCppOptions, RemoteOptions, VllmOptions
from memory.config import DatabaseConfig, RedisConfig
from server.settings_fields import BY_KEY, FIELDS, SETTINGS_TABLE, Field
from server.settings_parse import Environment, RateLimit

__all__ = [
    "CONFIG_FILE_VAR",
    "SETTINGS_TABLE",
    "Environment",
    "RateLimit",
    "Settings",
    "SettingsError",
    "default_pool_max",
    "host_patterns",
    "load_settings",
    "mask_url",
]

MIN_JWT_SECRET_BYTES = 32
CONFIG_FILE_VAR = "COMPANION_CONFIG"


class SettingsError(Exception):
    """The configuration is unusable; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


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
    memory_model: str  # "chat" (the default chat model) or a catalog model id
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
            "memory_model": self.memory_model,
            "session_ttl_s": str(self.session_ttl_s),
            "buffer_size": str(self.buffer_size),
            "chat_engine": self.chat_engine.backend,
            "chat_model": str(self.chat_engine.model_path or "(packaged default)"),
            "chat_small_model": str(self.chat_small_model or "(none)"),
            "chat_kv": f"{self.chat_engine.n_ctx or 'auto'} cells,"
            f" {self.chat_engine.n_slots} slots, {self.chat_engine.llamacpp.kv_layout} layout",
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
    for field in FIELDS:
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
    unknown = sorted(set(data) - set(BY_KEY))
    if unknown:
        problems.append(f"{path}: unknown settings {', '.join(unknown)}")
    return {key: value for key, value in data.items() if key in BY_KEY}


def _raw_value(
    field: Field,
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
    """`Settings` from parsed ``values``: a setting whose name is a `Settings` field is
    taken as it is; the configs of other packages are built from theirs."""
    same_name = {f.name: values[f.name] for f in dataclasses.fields(Settings) if f.name in values}
    return Settings(
        **{
            **same_name,
            "database": DatabaseConfig(
                url=values["database_url"],
                pool_min=values["database_pool_min"],
                pool_max=values["database_pool_max"],
                command_timeout_s=values["database_timeout_s"],
                migrate_on_start=values["migrate_on_start"],
            ),
            "redis": RedisConfig(
                url=values["redis_url"], max_connections=values["redis_max_connections"]
            ),
            "hf_endpoint": values["hf_endpoint"] or BY_KEY["hf_endpoint"].default,
            "chat_engine": _chat_engine(values),
        }
    )


def _chat_engine(values: Mapping[str, Any]) -> ChatEngineConfig:
    """The chat engine's config: each setting with an ``engine`` target in the table goes
    there (``"n_ctx"``, ``"llamacpp.nice"``...); the rest are derived here."""
    parts: dict[str, dict[str, Any]] = {"": {}, "llamacpp": {}, "remote": {}, "vllm": {}}
    for field in FIELDS:
        if field.engine:
            group, _, name = field.engine.rpartition(".")
            parts[group][name] = values[field.key]
    return ChatEngineConfig(
        backend=values["chat_engine"],
        model_path=values["chat_model"],
        # a model given by path is served under its file (or directory) name
        model_id=_model_id(values["chat_model"]),
        deadline_s=float(values["chat_deadline_s"]),
        state_dir=values["data_dir"] / "engines",
        llamacpp=LlamaCppOptions(
            host_cache_bytes=values["host_kv_cache_mb"] << 20, **parts["llamacpp"]
        ),
        remote=RemoteOptions(**parts["remote"]),
        vllm=VllmOptions(**parts["vllm"]),
        **parts[""],
    )


def _model_id(path: Path | None) -> str:
    if path is None:
        return "smollm2-135m-instruct"
    return path.name if path.is_dir() else path.stem
