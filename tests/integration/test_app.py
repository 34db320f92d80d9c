"""The app over real PostgreSQL and Redis: readiness, error bodies, request ids, metrics, gzip."""

from __future__ import annotations

import dataclasses
import gc
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from litestar import Litestar, post
from litestar.params import JSONBody
from litestar.testing import AsyncTestClient

from inference.config import ChatEngineConfig
from inference.errors import ContextLengthExceeded, EngineOverloaded
from memory.config import RedisConfig
from memory.embedded import EmbeddedRedis
from server.app import create_app
from server.settings import Settings


@post("/test/echo")
async def echo(data: JSONBody[dict[str, str]]) -> dict[str, str]:
    return data


@post("/test/boom")
async def boom() -> None:
    raise RuntimeError("secret internals at /srv/app.py line 12")


@post("/test/overload")
async def overload() -> None:
    raise EngineOverloaded("256 requests already waiting", retry_after_s=2.4)


@post("/test/too-long")
async def too_long() -> None:
    raise ContextLengthExceeded("prompt (9000 tokens) exceeds the context of 8192 tokens")


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    small = dataclasses.replace(settings, max_body_bytes=2048)
    app = create_app(small, extra_route_handlers=[echo, boom, overload, too_long])
    async with AsyncTestClient(app) as test_client:
        yield test_client


async def test_ready_reports_each_component(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["components"]) == {"database", "redis"}
    assert all(c["status"] == "up" and c["latency_ms"] >= 0 for c in body["components"].values())
    assert (await client.get("/health/live")).json() == {"status": "ok"}


async def test_startup_objects_are_kept_out_of_garbage_collection(settings: Settings) -> None:
    gc.unfreeze()  # process-wide: another app in this test run may have frozen already
    assert gc.get_freeze_count() == 0
    async with AsyncTestClient(create_app(settings)) as client:
        assert (await client.get("/health/live")).status_code == 200
        # a full collection no longer walks the libraries and models loaded at startup
        assert gc.get_freeze_count() > 10_000


async def test_readiness_follows_redis_down_and_back(settings: Settings) -> None:
    with tempfile.TemporaryDirectory(prefix="cmp-", dir="/tmp") as directory:
        redis_server = EmbeddedRedis(Path(directory))
        url = redis_server.start()
        own = dataclasses.replace(settings, redis=RedisConfig(url=url, socket_timeout_s=1.0))
        try:
            async with AsyncTestClient(create_app(own)) as client:
                assert (await client.get("/health/ready")).status_code == 200

                redis_server.stop()
                down = await client.get("/health/ready")
                assert down.status_code == 503
                components = down.json()["components"]
                assert components["redis"]["status"] == "down"
                assert components["database"]["status"] == "up"

                redis_server.start()
                assert (await client.get("/health/ready")).status_code == 200
        finally:
            redis_server.stop()


async def test_unknown_route_is_a_json_404(client: AsyncTestClient[Litestar]) -> None:
    response = await client.get("/no/such/thing")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["request_id"] == response.headers["x-request-id"]


async def test_wrong_method_is_a_json_405(client: AsyncTestClient[Litestar]) -> None:
    response = await client.delete("/health/live")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert "GET" in response.headers["allow"]


async def test_oversized_body_is_a_json_413(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.post("/test/echo", json={"a": "b"})).json() == {"a": "b"}
    response = await client.post("/test/echo", json={"text": "x" * 4096})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


async def test_malformed_body_is_a_json_400(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post(
        "/test/echo", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_server_error_hides_internals(client: AsyncTestClient[Litestar]) -> None:
    response = await client.post("/test/boom")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text


async def test_request_id_is_kept_or_minted(client: AsyncTestClient[Litestar]) -> None:
    kept = await client.get("/health/live", headers={"x-request-id": "trace-42"})
    assert kept.headers["x-request-id"] == "trace-42"
    hostile = await client.get("/health/live", headers={"x-request-id": "a b\tc" * 50})
    minted = hostile.headers["x-request-id"]
    assert minted != "a b\tc" * 50 and len(minted) == 32


async def test_metrics_count_requests_and_large_bodies_are_gzipped(
    client: AsyncTestClient[Litestar],
) -> None:
    await client.get("/health/live")
    response = await client.get("/metrics", headers={"accept-encoding": "gzip"})
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert 'companion_requests_total{app_name="companion"' in response.text
    assert 'path="/health/live"' in response.text
    small = await client.get("/health/live", headers={"accept-encoding": "gzip"})
    assert "content-encoding" not in small.headers


async def test_inference_errors_map_to_http(client: AsyncTestClient[Litestar]) -> None:
    busy = await client.post("/test/overload")
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "2"
    assert busy.json()["error"]["code"] == "overloaded"
    long = await client.post("/test/too-long")
    assert long.status_code == 413
    assert long.json()["error"]["code"] == "context_length_exceeded"


async def test_engine_is_started_probed_and_measured(settings: Settings, tiny_gguf: Path) -> None:
    engine = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=1024, n_slots=2)
    with_engine = dataclasses.replace(settings, chat_engine=engine)
    async with AsyncTestClient(create_app(with_engine)) as client:
        ready = await client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["components"]["engine"]["status"] == "up"
        metrics = (await client.get("/metrics")).text
        assert 'companion:kv_cache_usage_perc{model_name="tiny"}' in metrics
        resources = client.app.state.resources
        assert resources.engine is not None
        assert resources.engine.model_id == "tiny"
