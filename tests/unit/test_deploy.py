"""compose.gpu.yml and deploy/: the structural promises of docs/deploy.md, checked on the files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_TEXT = (ROOT / "compose.gpu.yml").read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
NGINX = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|TOKEN|AUTH")
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def default(value: object) -> str:
    """A compose value with ``${VAR:-default}`` read as its default."""
    text = str(value)
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:-([^}]*)\}", text)
    return match[1] if match else text


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment", {})
    return {str(k): str(v) for k, v in env.items()}


def test_every_service_of_the_deployment_is_there() -> None:
    assert set(SERVICES) == {
        "vllm",
        "router",
        "postgres",
        "redis",
        "migrate",
        "api",
        "worker",
        "nginx",
        "prometheus",
        "grafana",
    }
    assert SERVICES["vllm"]["image"].startswith("vllm/vllm-openai:")
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:")
    assert SERVICES["worker"]["command"][:2] == ["companion", "worker"]
    assert SERVICES["migrate"]["command"] == ["companion", "migrate"]


def test_long_running_services_have_health_checks_and_start_in_order() -> None:
    for name, service in SERVICES.items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), name
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            if dependency == "migrate":
                assert rule["condition"] == "service_completed_successfully"
            else:
                assert rule["condition"] == "service_healthy", (name, dependency)
    for name in ("api", "worker"):
        assert set(SERVICES[name]["depends_on"]) == {"migrate", "postgres", "redis", "router"}
    assert set(SERVICES["router"]["depends_on"]) == {"vllm"}
    assert "api" in SERVICES["nginx"]["depends_on"]


def test_vllm_has_a_gpu_and_prefix_caching() -> None:
    vllm = SERVICES["vllm"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert "--enable-prefix-caching" in vllm["command"]
    assert "--enable-prompt-tokens-details" in vllm["command"]  # cached_tokens upstream
    assert "--served-model-name=companion-chat" in vllm["command"]
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])


def test_api_replicas_use_the_remote_vllm_engine_and_leave_jobs_to_the_worker() -> None:
    assert int(default(SERVICES["api"]["deploy"]["replicas"])) >= 2
    for name in ("api", "worker", "migrate"):
        env = environment(name)
        assert env["COMPANION_ENV"] == "production"
        assert env["COMPANION_CHAT_ENGINE"] == "remote"
        assert env["COMPANION_CHAT_REMOTE_FLAVOR"] == "vllm"
        assert env["COMPANION_MEMORY_WORKER"] == "off"
        upstream = urlsplit(env["COMPANION_CHAT_REMOTE_URLS"])
        assert upstream.hostname == "router" and upstream.port == 8000
        assert env["COMPANION_CHAT_REMOTE_MODEL"] == "companion-chat"
        assert urlsplit(env["DATABASE_URL"]).hostname == "postgres"
        assert urlsplit(env["REDIS_URL"]).hostname == "redis"


def test_the_router_hashes_sessions_over_the_vllm_replicas() -> None:
    router = SERVICES["router"]
    script = router["command"][-1]
    assert script.startswith("exec vllm-router ") and "--policy consistent_hash" in script
    assert "--worker-urls $$VLLM_WORKER_URLS" in script
    assert default(router["environment"]["VLLM_WORKER_URLS"]) == "http://vllm:8000"
    pinned = (ROOT / "deploy" / router["build"]["dockerfile"]).read_text()
    assert "vllm-router==0.1.17" in pinned  # the version the router tests run


def test_redis_persists_with_aof_and_data_lives_in_volumes() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    declared = set(COMPOSE["volumes"])
    assert {"models", "pgdata", "redisdata", "promdata", "grafanadata"} <= declared
    for service, volume in (("postgres", "pgdata"), ("redis", "redisdata"), ("vllm", "models")):
        assert any(v.startswith(f"{volume}:") for v in SERVICES[service]["volumes"])


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name in SERVICES:
        for key, value in environment(name).items():
            if SECRET_NAME.search(key) and value:
                assert INTERPOLATION.match(value), (name, key)
            if key in ("DATABASE_URL", "REDIS_URL"):
                password = urlsplit(value).password
                assert password is not None and INTERPOLATION.match(password), (name, key)
    redis = SERVICES["redis"]["command"]
    assert INTERPOLATION.match(redis[redis.index("--requirepass") + 1])
    assert "change-me" not in COMPOSE_TEXT


def test_every_required_variable_is_in_the_example_env_file() -> None:
    example = (DEPLOY / "env.example").read_text(encoding="utf-8")
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, re.MULTILINE))
    referenced = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_TEXT))
    assert referenced <= documented, referenced - documented
    assert "deploy/.env" in (ROOT / ".gitignore").read_text(encoding="utf-8")


def test_nginx_balances_the_api_service_and_streams() -> None:
    upstream = re.search(r"upstream (\w+) \{(.*?)\}", NGINX, re.DOTALL)
    assert upstream is not None
    name, body = upstream[1], upstream[2]
    assert "least_conn;" in body and "keepalive" in body
    server = re.search(r"server (\S+):(\d+)", body)
    assert server is not None
    assert server[1] in SERVICES and server[1] == "api"
    assert server[2] == environment("api")["COMPANION_PORT"]
    assert f"proxy_pass http://{name};" in NGINX
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'Connection "";'):
        assert directive in NGINX, directive
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", NGINX)
    assert read_timeout is not None and int(read_timeout[1]) >= 600
    mounted = SERVICES["nginx"]["volumes"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in mounted


def test_prometheus_scrapes_the_api_replicas_the_worker_and_vllm() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    targets: set[tuple[str, int]] = set()
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets |= {(n, sd["port"]) for n in sd["names"]}
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.split(":")
                targets.add((host, int(port)))
    worker_command = SERVICES["worker"]["command"]
    worker_port = int(worker_command[worker_command.index("--metrics-port") + 1])
    assert targets == {("api", 8000), ("worker", worker_port), ("vllm", 8000)}


def test_grafana_is_provisioned_with_the_datasource_its_dashboard_uses() -> None:
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text(encoding="utf-8")
    )
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/companion.yml").read_text(encoding="utf-8")
    )
    path = provider["providers"][0]["options"]["path"]
    assert f"./deploy/grafana/dashboards:{path}:ro" in SERVICES["grafana"]["volumes"]
    dashboard = json.loads((DEPLOY / "grafana/dashboards/companion.json").read_text("utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


@pytest.mark.parametrize("path", ["Containerfile"])
def test_the_image_is_multi_stage_non_root_and_checks_its_health(path: str) -> None:
    text = (ROOT / path).read_text(encoding="utf-8")
    stages = re.findall(r"^FROM .+ AS (\S+)$", text, re.MULTILINE)
    assert "builder" in stages and "runtime" in stages
    assert re.search(r"^ARG VARIANT=cpu$", text, re.MULTILINE)
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER companion$", runtime, re.MULTILINE)
    assert "HEALTHCHECK" in runtime and "/health/live" in runtime
    assert "build-essential" not in runtime  # compilers stay in the builder
