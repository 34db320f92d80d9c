"""The engine raising mid-stream: the client gets an SSE ``error`` event, the server stays up.

A fault injector wraps the real (tiny) engine at the chat service's edge: it
relays the engine's events and raises an `InferenceError` subclass once a
few tokens went out, for the first request only.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sse_events import sse_events

from inference.engine import Engine
from inference.errors import InferenceError
from inference.types import GenerationRequest, StreamEvent, TextDelta

pytestmark = pytest.mark.slow

TOKENS_BEFORE_FAULT = 1
WAIT_S = 30  # a guard for the engine to release the aborted request, not a timing assertion


class InjectedFault(InferenceError):
    """The failure the injector raises mid-stream."""


class FailingEngine:
    """Delegates to ``inner``; the first ``failures`` requests raise after ``tokens`` tokens."""

    def __init__(self, inner: Engine, tokens: int, failures: int = 1) -> None:
        self._inner = inner
        self._tokens = tokens
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        fail, relayed = self.failures > 0, 0
        self.failures -= int(fail)
        async with aclosing(self._inner.generate(request)) as events:
            async for item in events:
                if fail and relayed >= self._tokens:
                    raise InjectedFault("the engine failed mid-stream (injected)")
                relayed += isinstance(item, TextDelta)
                yield item


async def test_engine_error_mid_stream(chat_client: AsyncTestClient[Litestar]) -> None:
    chat = chat_client.app.state.resources.chat
    real = chat._engine
    chat._engine = FailingEngine(real, TOKENS_BEFORE_FAULT)
    credentials = {"username": f"e{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert (await chat_client.post("/api/v1/auth/register", json=credentials)).status_code == 201
    login = await chat_client.post("/api/v1/auth/login", json=credentials)
    auth = {"Authorization": f"Bearer {login.json()['access_token']}"}
    stream = {**auth, "Accept": "text/event-stream"}
    created = await chat_client.post("/api/v1/conversations", json={}, headers=auth)
    url = f"/api/v1/conversations/{created.json()['id']}/messages"

    failed = await chat_client.post(url, json={"content": "Tell me a story."}, headers=stream)
    assert failed.status_code == 200
    names = [name for name, _ in sse_events(failed.text)]
    assert names == ["meta"] + ["token"] * TOKENS_BEFORE_FAULT + ["error"], failed.text
    assert sse_events(failed.text)[-1][1]["code"] == "InjectedFault"

    # The abandoned generation is aborted, not leaked. The engine process reports its KV
    # in snapshots (at most a quarter second old) while the request count is exact, so
    # wait for both rather than reading the KV the moment the count drops.
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        stats = real.stats()
        if stats.running == 0 and stats.kv_cells_used == 0:
            break
        await asyncio.sleep(0.1)
    stats = real.stats()
    assert stats.running == 0 and stats.kv_cells_used == 0, stats

    assert (await chat_client.get("/health/ready")).status_code == 200
    again = await chat_client.post(url, json={"content": "Tell me a story."}, headers=stream)
    assert sse_events(again.text)[-1][0] == "done", again.text
    roles = [m["role"] for m in (await chat_client.get(url, headers=auth)).json()]
    assert roles == ["user", "user", "assistant"]  # the failed turn kept its message only
