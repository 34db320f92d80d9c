"""The web UI's routes in the app: the page, its assets, their headers, and what stays JSON.

Also ``/api/v1/models``, the status endpoint the page reads with an access token.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from inference.config import ChatEngineConfig
from inference.engine_choice import choose
from inference.types import ChatMessage, GenerationRequest, Priority, SamplingParams, TextDelta
from server.app import create_app
from server.settings import Settings
from server.web_ui import WEB_DIR


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(settings)) as test_client:
        yield test_client


def csp_of(response: httpx.Response) -> dict[str, str]:
    header = response.headers["content-security-policy"]
    return dict(part.strip().split(" ", 1) for part in header.split(";"))


async def test_the_page_is_served_at_the_root_with_a_strict_policy(
    client: AsyncTestClient[Litestar],
) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/ui/js/main.js">' in response.text
    policy = csp_of(response)
    assert policy["default-src"] == "'self'"
    assert policy["script-src"] == "'self'"  # no inline scripts, no eval
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-cache"


async def test_every_referenced_asset_is_served(client: AsyncTestClient[Litestar]) -> None:
    page = (await client.get("/")).text
    referenced = re.findall(r'(?:src|href)="(/ui/[^"]+)"', page)
    assert {"/ui/app.css", "/ui/js/main.js", "/ui/icon.svg"} <= set(referenced)
    for path in referenced:
        response = await client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" in response.headers
    script = await client.get("/ui/js/main.js")
    assert script.headers["content-type"].split(";")[0] in {
        "text/javascript",
        "application/javascript",
    }


async def test_modules_import_only_files_that_exist() -> None:
    for module in (WEB_DIR / "js").glob("*.js"):
        for target in re.findall(r'from "(\.[^"]+)"', module.read_text(encoding="utf-8")):
            assert (module.parent / target).resolve().is_file(), f"{module.name}: {target}"


async def test_page_loads_nothing_from_elsewhere() -> None:
    for path in WEB_DIR.rglob("*"):
        if path.is_file():
            text = Path(path).read_text(encoding="utf-8")
            assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path.name
            assert "<script>" not in text and " style=" not in text, path.name


@pytest.mark.parametrize(
    "path", ["/api/v1/no-such-thing", "/v1/no-such-thing", "/no-such-page", "/ui/missing.js"]
)
async def test_unknown_paths_get_the_json_404(client: AsyncTestClient[Litestar], path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_the_api_and_health_still_answer_beside_the_page(
    client: AsyncTestClient[Litestar],
) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    assert (await client.get("/api/v1/personas")).status_code == 401
    assert (await client.get("/metrics")).status_code == 200


async def test_models_status_needs_a_signed_in_user(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/api/v1/models")).status_code == 401
    credentials = {"username": f"u{uuid.uuid4().hex[:10]}", "password": "long enough"}
    assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    response = await client.get("/api/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    # these settings run no chat engine and no embedder: nothing served, no load to report
    assert response.json() == {"models": [], "engine": None, "engine_choice": None}


async def test_models_status_names_the_engine_auto_chose_and_why(
    settings: Settings, tiny_gguf: Path
) -> None:
    """`COMPANION_CHAT_ENGINE=auto` (the default): the panel says which engine serves the chat
    model and how it was chosen. Only llama.cpp is offered here, so nothing is probed (the
    probe itself: tests/integration/test_engine_choice.py)."""
    engine = ChatEngineConfig(
        backend="auto",
        model_path=tiny_gguf,
        model_id="tiny",
        n_ctx=2048,
        n_slots=4,
        state_dir=settings.data_dir / "engines",
    )
    assert (await choose(engine, candidates=["llamacpp"])).backend == "llamacpp"
    app = create_app(dataclasses.replace(settings, chat_engine=engine))
    async with AsyncTestClient(app, timeout=120) as client:
        credentials = {"username": f"u{uuid.uuid4().hex[:10]}", "password": "long enough"}
        assert (await client.post("/api/v1/auth/register", json=credentials)).status_code == 201
        login = await client.post("/api/v1/auth/login", json=credentials)
        auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
        status = (await client.get("/api/v1/models", headers=auth)).json()
    assert status["models"] == [{"id": "tiny", "role": "chat", "engine": "llamacpp"}]
    choice = status["engine_choice"]
    assert choice["engine"] == "llamacpp" and choice["reason"] == "the only engine installed"
    assert choice["figures"] == {} and choice["failed"] == {}


async def test_models_status_tells_background_jobs_apart(
    chat_client: AsyncTestClient[Litestar],
) -> None:
    """A memory job on the chat engine shows as background load, not as someone's turn."""
    credentials = {"username": f"u{uuid.uuid4().hex[:10]}", "password": "long enough"}
    assert (await chat_client.post("/api/v1/auth/register", json=credentials)).status_code == 201
    login = await chat_client.post("/api/v1/auth/login", json=credentials)
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    engine = chat_client.app.state.resources.engine
    job = GenerationRequest(
        request_id=f"job-{uuid.uuid4().hex}",
        user_id=str(uuid.uuid4()),
        messages=[ChatMessage("user", "Summarise our conversation so far.")],
        sampling=SamplingParams(max_tokens=1000, ignore_eos=True),
        priority=Priority.BACKGROUND,
    )
    generating, done = threading.Event(), threading.Event()

    async def run_job() -> None:  # on the app's event loop, where its engine lives
        async with aclosing(engine.generate(job)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    generating.set()
                    while not done.is_set():
                        await asyncio.sleep(0.05)
                    return

    finished = chat_client.blocking_portal.start_task_soon(run_job)
    try:
        assert await asyncio.to_thread(generating.wait, 120), "the job never generated"
        status = await chat_client.get("/api/v1/models", headers=auth)
        load = status.json()["engine"]
        assert load["background"] == 1, load
        assert load["running"] + load["waiting"] >= 1
    finally:
        done.set()
        await asyncio.wrap_future(finished)
    load = (await chat_client.get("/api/v1/models", headers=auth)).json()["engine"]
    assert load["background"] == 0
