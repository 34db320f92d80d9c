from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.config import (
    AUTO_UNIFIED_CELLS,
    PER_SLOT_MIN_CELLS,
    ChatEngineConfig,
    auto_kv_cells,
    per_slot_layout,
    plan_weights,
    q8_0_copy_bytes,
)
from server.settings import Environment, RateLimit, SettingsError, load_settings, mask_url

GOOD_SECRET = "s" * 32
PRODUCTION = {
    "COMPANION_ENV": "production",
    "COMPANION_JWT_SECRET": GOOD_SECRET,
    "DATABASE_URL": "postgresql://app:pw@db:5432/companion",
    "REDIS_URL": "redis://cache:6379/0",
    "COMPANION_CORS_ORIGINS": "https://chat.example.com",
}


def problems_of(env: dict[str, str], **kwargs: object) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load_settings(env, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def test_development_defaults_need_no_environment(tmp_path: Path) -> None:
    settings = load_settings({"COMPANION_DATA_DIR": str(tmp_path)})
    assert settings.environment is Environment.DEVELOPMENT
    assert settings.data_dir == tmp_path
    assert settings.embedded_database and settings.embedded_redis
    cores = len(os.sched_getaffinity(0))  # pool: two connections a core, at least four
    assert settings.database.pool_max == max(4, 2 * cores) >= settings.database.pool_min
    assert settings.rate_limit_user == RateLimit(60, 60)


def test_environment_values_are_parsed_and_typed() -> None:
    settings = load_settings(
        {
            "COMPANION_PORT": "9001",
            "COMPANION_WORKERS": "4",
            "COMPANION_DATABASE_POOL_MAX": "50",
            "COMPANION_RATE_LIMIT_IP": "10/second",
            "COMPANION_DEV_HEADER_AUTH": "yes",
            "COMPANION_CORS_ORIGINS": "http://localhost:3000, https://a.example/",
        }
    )
    assert (settings.port, settings.workers, settings.database.pool_max) == (9001, 4, 50)
    assert settings.rate_limit_ip == RateLimit(10, 1)
    assert settings.dev_header_auth is True
    assert settings.cors_origins == ("http://localhost:3000", "https://a.example")


def test_malformed_values_name_the_variable_and_the_expectation() -> None:
    problems = problems_of(
        {
            "COMPANION_PORT": "eighty",
            "COMPANION_RATE_LIMIT_USER": "lots",
            "COMPANION_DEV_HEADER_AUTH": "maybe",
            "DATABASE_URL": "mysql://x",
            "COMPANION_LOG_LEVEL": "loud",
        }
    )
    text = "\n".join(problems)
    assert len(problems) == 5, text
    assert "COMPANION_PORT: expected an integer from 1 to 65535, got 'eighty'" in text
    assert "COMPANION_RATE_LIMIT_USER: expected a rate like 60/minute" in text
    assert "COMPANION_DEV_HEADER_AUTH: expected true or false" in text
    assert "COMPANION_LOG_LEVEL: expected one of debug, info, warning, error" in text
    assert "DATABASE_URL: expected a URL starting with postgresql://" in text


def test_route_rate_limits_parse_from_text_and_toml_tables() -> None:
    assert load_settings({}).rate_limit_routes == {
        "turn": RateLimit(30, 60),
        "auth": RateLimit(10, 60),
    }
    settings = load_settings({"COMPANION_RATE_LIMIT_ROUTES": " turn = 5/second , v1=100/hour"})
    assert settings.rate_limit_routes == {"turn": RateLimit(5, 1), "v1": RateLimit(100, 3600)}
    for bad in ("turn", "turn=often", "Turn!=1/second"):
        problems = problems_of({"COMPANION_RATE_LIMIT_ROUTES": bad})
        assert len(problems) == 1
        assert problems[0].startswith("COMPANION_RATE_LIMIT_ROUTES: expected")


def test_secret_values_are_never_echoed_in_errors() -> None:
    problems = problems_of({"DATABASE_URL": "mysql://user:hunter2@db/x"})
    assert problems and all("hunter2" not in p for p in problems)


def test_production_lists_every_refusal_at_once() -> None:
    problems = problems_of(
        {
            "COMPANION_ENV": "production",
            "COMPANION_CORS_ORIGINS": "*",
            "COMPANION_DEV_HEADER_AUTH": "1",
        }
    )
    text = "\n".join(problems)
    assert len(problems) == 5, text
    for variable in (
        "COMPANION_JWT_SECRET",
        "COMPANION_CORS_ORIGINS",
        "COMPANION_DEV_HEADER_AUTH",
        "DATABASE_URL",
        "REDIS_URL",
    ):
        assert variable in text


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"COMPANION_JWT_SECRET": "short"}, "at least 32 bytes"),
        ({"COMPANION_JWT_SECRET": ""}, "COMPANION_JWT_SECRET: required"),
        ({"COMPANION_CORS_ORIGINS": "https://a.example,*"}, "'*' is not allowed"),
        ({"COMPANION_DEV_HEADER_AUTH": "true"}, "header auth is refused"),
        ({"DATABASE_URL": ""}, "no embedded PostgreSQL"),
        ({"REDIS_URL": ""}, "no embedded Redis"),
    ],
)
def test_each_production_refusal_alone(change: dict[str, str], expected: str) -> None:
    problems = problems_of({**PRODUCTION, **change})
    assert len(problems) == 1
    assert expected in problems[0]


def test_a_complete_production_configuration_starts() -> None:
    settings = load_settings(PRODUCTION)
    assert settings.is_production
    assert settings.production_problems() == []


def test_production_checks_can_be_reported_instead_of_refused() -> None:
    settings = load_settings({"COMPANION_ENV": "production"}, check_production=False)
    assert len(settings.production_problems()) == 3


def test_toml_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    config = tmp_path / "companion.toml"
    config.write_text('port = 7000\nworkers = 3\nlog_format = "console"\n')
    settings = load_settings({"COMPANION_CONFIG": str(config), "COMPANION_WORKERS": "2"})
    assert (settings.port, settings.workers, settings.log_format) == (7000, 2, "console")


def test_overrides_beat_environment() -> None:
    settings = load_settings({"COMPANION_PORT": "7000"}, overrides={"port": 7100, "host": None})
    assert settings.port == 7100
    assert settings.host == "127.0.0.1"


def test_toml_problems_are_reported(tmp_path: Path) -> None:
    config = tmp_path / "companion.toml"
    config.write_text('port = "high"\nfavourite_colour = "blue"\n')
    text = "\n".join(problems_of({}, config_file=config))
    assert "unknown settings favourite_colour" in text
    assert "port (config file): expected an integer" in text

    config.write_text("port = \n")
    assert "is not valid TOML" in "\n".join(problems_of({}, config_file=config))
    missing = tmp_path / "absent.toml"
    assert "cannot read" in "\n".join(problems_of({}, config_file=missing))


def test_pool_bounds_must_be_ordered() -> None:
    problems = problems_of(
        {"COMPANION_DATABASE_POOL_MIN": "30", "COMPANION_DATABASE_POOL_MAX": "10"}
    )
    assert problems == ["COMPANION_DATABASE_POOL_MIN: must not exceed COMPANION_DATABASE_POOL_MAX"]


def test_describe_masks_secrets() -> None:
    shown = load_settings(PRODUCTION).describe()
    assert shown["database_url"] == "postgresql://app:***@db:5432/companion"
    assert GOOD_SECRET not in str(shown)
    assert mask_url("redis://cache:6379/0") == "redis://cache:6379/0"


def test_api_keys_default_to_off_only_for_local_development() -> None:
    assert load_settings({}).api_keys_required is False  # development on 127.0.0.1
    exposed = load_settings({"COMPANION_HOST": "0.0.0.0", "COMPANION_API_KEYS_REQUIRED": ""})
    assert exposed.api_keys_required is True
    assert load_settings(PRODUCTION).api_keys_required is True


def test_api_keys_cannot_be_off_when_exposed_or_in_production() -> None:
    exposed = {"COMPANION_HOST": "0.0.0.0", "COMPANION_API_KEYS_REQUIRED": "false"}
    assert "only when bound to a loopback address" in problems_of(exposed)[0]
    production = {**PRODUCTION, "COMPANION_HOST": "127.0.0.1", "COMPANION_API_KEYS_REQUIRED": "0"}
    assert "required in production" in problems_of(production)[0]


def test_session_ttl_and_buffer_size_are_read_and_bounded() -> None:
    settings = load_settings({"COMPANION_SESSION_TTL": "3600", "COMPANION_BUFFER_SIZE": "12"})
    assert (settings.session_ttl_s, settings.buffer_size) == (3600, 12)
    defaults = load_settings({})
    assert (defaults.session_ttl_s, defaults.buffer_size) == (86400, 40)
    problems = problems_of({"COMPANION_SESSION_TTL": "1h", "COMPANION_BUFFER_SIZE": "1"})
    text = "\n".join(problems)
    assert len(problems) == 2, text
    assert "COMPANION_SESSION_TTL: expected an integer from 60 to 2592000, got '1h'" in text
    assert "COMPANION_BUFFER_SIZE: expected an integer from 2 to 1000, got '1'" in text


def test_session_ttl_and_buffer_size_reach_the_redis_stores() -> None:
    from server.resources import buffer_config, session_config

    settings = load_settings({"COMPANION_SESSION_TTL": "600", "COMPANION_BUFFER_SIZE": "8"})
    assert session_config(settings).ttl_s == 600
    assert (buffer_config(settings).size, buffer_config(settings).ttl_s) == (8, 600)


def test_development_header_auth_is_refused_off_loopback() -> None:
    # anyone who can reach the port could claim to be any user with X-User-Id
    with pytest.raises(SettingsError, match="COMPANION_DEV_HEADER_AUTH"):
        load_settings({"COMPANION_HOST": "0.0.0.0", "COMPANION_DEV_HEADER_AUTH": "true"})
    assert load_settings({"COMPANION_DEV_HEADER_AUTH": "true"}).dev_header_auth is True


def test_trusted_proxies_are_addresses_or_networks() -> None:
    assert load_settings({}).trusted_proxies == ()  # nobody by default, loopback included
    given = load_settings({"COMPANION_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"})
    assert given.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    with pytest.raises(SettingsError, match="COMPANION_TRUSTED_PROXIES"):
        load_settings({"COMPANION_TRUSTED_PROXIES": "nginx"})


def test_vllm_takes_a_model_directory_and_its_own_settings(tmp_path: Path) -> None:
    model = tmp_path / "SmolLM2-vllm.v2"
    model.mkdir()
    (model / "config.json").write_text("{}")
    settings = load_settings(
        {
            "COMPANION_DATA_DIR": str(tmp_path),
            "COMPANION_CHAT_ENGINE": "vllm",
            "COMPANION_CHAT_MODEL": str(model),
            "COMPANION_VLLM_KV_CACHE_MB": "512",
            "COMPANION_VLLM_EAGER": "false",
            "COMPANION_VLLM_CACHE_SCOPE": "shared",
        }
    )
    engine = settings.chat_engine
    assert (engine.backend, engine.model_path, engine.model_id) == ("vllm", model, model.name)
    assert (engine.vllm.kv_cache_mb, engine.vllm.eager, engine.vllm.cache_scope) == (
        512,
        False,
        "shared",
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(SettingsError, match=r"COMPANION_CHAT_MODEL.*config\.json"):
        load_settings(
            {"COMPANION_DATA_DIR": str(tmp_path), "COMPANION_CHAT_MODEL": str(tmp_path / "empty")}
        )
    with pytest.raises(SettingsError, match="COMPANION_VLLM_CACHE_SCOPE"):
        load_settings({"COMPANION_DATA_DIR": str(tmp_path), "COMPANION_VLLM_CACHE_SCOPE": "all"})


def test_the_content_judge_is_off_unless_it_names_a_model() -> None:
    defaults = load_settings({})
    assert (defaults.content_judge, defaults.content_judge_deadline_s) == ("off", 5.0)
    chat = load_settings(
        {"COMPANION_CONTENT_JUDGE": " Chat ", "COMPANION_CONTENT_JUDGE_DEADLINE": "2"}
    )
    assert (chat.content_judge, chat.content_judge_deadline_s) == ("chat", 2.0)
    assert chat.describe()["content_judge"] == "chat, 2 s deadline"
    # any other value is a catalog id (checked against the catalog at start), case kept
    assert load_settings({"COMPANION_CONTENT_JUDGE": "Qwen2.5-7B"}).content_judge == "Qwen2.5-7B"
    with pytest.raises(SettingsError, match="COMPANION_CONTENT_JUDGE_DEADLINE"):
        load_settings({"COMPANION_CONTENT_JUDGE_DEADLINE": "0"})


def test_the_kv_layout_is_per_slot_only_when_each_slot_holds_a_whole_companion_prompt(
    tmp_path: Path,
) -> None:
    def engine(**env: str) -> ChatEngineConfig:
        return load_settings({"COMPANION_DATA_DIR": str(tmp_path), **env}).chat_engine

    default = engine()
    assert default.llamacpp.kv_layout == "auto"
    assert default.n_ctx == 0  # sized for the model when the engine is built (below)
    # 8192 cells over 16 slots: 512 each, too few for persona, memories and history
    unified = engine(COMPANION_CHAT_CTX="8192")
    assert not unified.llamacpp.per_slot(unified.n_ctx, unified.n_slots)
    roomy = engine(COMPANION_CHAT_CTX="32768", COMPANION_CHAT_SLOTS="8")
    assert roomy.llamacpp.per_slot(roomy.n_ctx, roomy.n_slots)  # 4096 each
    forced = engine(COMPANION_CHAT_KV_LAYOUT="unified", COMPANION_CHAT_CTX="32768")
    assert not forced.llamacpp.per_slot(forced.n_ctx, forced.n_slots)
    small = engine(COMPANION_CHAT_KV_LAYOUT="per_slot")
    assert small.llamacpp.per_slot(small.n_ctx, small.n_slots)
    with pytest.raises(SettingsError, match="COMPANION_CHAT_KV_LAYOUT"):
        engine(COMPANION_CHAT_KV_LAYOUT="paged")


def test_chat_ctx_0_sizes_the_kv_cache_for_the_model_and_the_machine(tmp_path: Path) -> None:
    def ctx(value: str) -> int:
        env = {"COMPANION_DATA_DIR": str(tmp_path), "COMPANION_CHAT_CTX": value}
        return load_settings(env).chat_engine.n_ctx

    assert ctx("0") == 0 and ctx("256") == 256
    with pytest.raises(SettingsError, match=r"COMPANION_CHAT_CTX.*0 or an integer from 256"):
        ctx("100")
    with pytest.raises(SettingsError, match="COMPANION_CHAT_CTX"):
        ctx("auto")
    gib = 1 << 30
    smollm2_135m = 23_040  # bytes of K and V a cell: 30 layers x 3 heads x 64 x 2 x 2
    # 16 slots of 4096 cells (1.5 GB) within an eighth of 24 GiB: cells of its own each
    assert auto_kv_cells(16, smollm2_135m, 24 * gib) == 16 * PER_SLOT_MIN_CELLS
    assert per_slot_layout("auto", 16 * PER_SLOT_MIN_CELLS, 16)
    # not within an eighth of 8 GiB, nor an 8B model's 128 KB a cell within 24 GiB: one pool
    assert auto_kv_cells(16, smollm2_135m, 8 * gib) == AUTO_UNIFIED_CELLS
    assert auto_kv_cells(16, 131_072, 24 * gib) == AUTO_UNIFIED_CELLS
    assert auto_kv_cells(4, 131_072, 24 * gib) == 4 * PER_SLOT_MIN_CELLS  # 2 GiB of 3
    assert not per_slot_layout("auto", AUTO_UNIFIED_CELLS, 16)
    # vLLM takes the cells as its longest sequence: 0 is AUTO_UNIFIED_CELLS there
    assert ChatEngineConfig().max_model_len == AUTO_UNIFIED_CELLS
    assert ChatEngineConfig(n_ctx=4096).max_model_len == 4096


def test_chat_weights_q8_0_copy_only_for_slow_types_within_the_memory_share(
    tmp_path: Path,
) -> None:
    def weights(value: str | None = None) -> str:
        env = {"COMPANION_DATA_DIR": str(tmp_path)}
        if value is not None:
            env["COMPANION_CHAT_WEIGHTS"] = value
        return load_settings(env).chat_engine.llamacpp.weights

    assert weights() == "auto" and weights("as-is") == "as-is" and weights("q8_0") == "q8_0"
    with pytest.raises(SettingsError, match="COMPANION_CHAT_WEIGHTS"):
        weights("q4_0")
    gib = 1 << 30
    # the packaged SmolLM2: Q4_1 matrices, a Q8_0 embedding (tied output), f32 norms
    smollm2 = {3: 106_168_320, 8: 28_311_552, 0: 35_136}
    file_bytes = 98_362_432  # the packaged file; its copy is 144,811,072 bytes
    assert q8_0_copy_bytes(smollm2, file_bytes) == 144_811_072
    copy = plan_weights("auto", smollm2, file_bytes, 24 * gib)
    assert copy.copy and "Q4_1" in copy.reason
    assert not plan_weights("as-is", smollm2, file_bytes, 24 * gib).copy
    # types with fast kernels stay: Q4_0, Q8_0, Q4_K (12), an all-f32 model
    for fast in ({2: 10**8, 0: 10**4}, {8: 10**8}, {12: 10**8, 3: 10**7}, {0: 10**6}):
        assert not plan_weights("auto", fast, 10**8, 24 * gib).copy, fast
    assert plan_weights("q8_0", {2: 10**8}, 10**8, 24 * gib).copy  # asked for
    # Q5_1 is as slow as Q4_1; a copy whose extra memory is over an eighth of the machine
    # is not made (an 8B Q4_1: ~4.5 GB -> ~8.5 GB, 4 GB more, on 16 GiB)
    assert plan_weights("auto", {7: 10**8}, 75 * 10**6, 24 * gib).copy
    big = plan_weights("auto", {3: 8 * 10**9}, 4_500_000_000, 16 * gib)
    assert not big.copy and "more memory" in big.reason
    assert plan_weights("auto", {3: 8 * 10**9}, 4_500_000_000, 64 * gib).copy
