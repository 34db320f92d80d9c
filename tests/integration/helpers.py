"""Small helpers shared by the integration tests."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient

from inference.config import ChatEngineConfig, LlamaCppOptions
from memory.protocols import PromptMessage
from server.app import create_app
from server.settings import Settings


async def new_user(pool: asyncpg.Pool) -> uuid.UUID:
    """A user row with a random name."""
    user_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO users (username) VALUES ($1) RETURNING id", uuid.uuid4().hex
    )
    return user_id


async def remember(
    pool: asyncpg.Pool,
    user: uuid.UUID,
    conversation: uuid.UUID,
    text: str,
    sources: Sequence[int],
) -> int:
    """An episodic memory drawn from the messages ``sources`` (what extraction stores),
    with a constant embedding; its id."""
    memory_id: int = await pool.fetchval(
        "INSERT INTO memories (user_id, conversation_id, kind, content, embedding,"
        " source_message_ids) VALUES ($1, $2, 'episodic', $3,"
        " array_fill(0.1, ARRAY[384])::real[]::vector, $4::bigint[]) RETURNING id",
        user,
        conversation,
        text,
        list(sources),
    )
    return memory_id


async def signed_in(client: AsyncTestClient[Litestar]) -> dict[str, str]:
    """Register and log in a new user over HTTP; its Authorization header."""
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    await client.post("/api/v1/auth/register", json=credentials)
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


class ScriptedGenerator:
    """Returns the scripted answers in order (an Exception instance is raised)."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    async def generate_json(
        self, prompt_messages: Sequence[PromptMessage], schema: Mapping[str, Any], user_id: str
    ) -> str:
        self.prompts.append("\n".join(m.content for m in prompt_messages))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """An ASGI app served by uvicorn on a thread, on a real port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class Upstream(Served):
    """One instance of the service, served by uvicorn on a thread."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings))


def catalog_settings(settings: Settings, tiny_gguf: Path, **extra: str) -> Settings:
    """Settings serving ``tiny`` by default, with a, b, c (and ``extra`` TOML) in the catalog."""
    lines = []
    for name in ("a", "b", "c"):
        copy = settings.data_dir / f"{name}.gguf"
        shutil.copyfile(tiny_gguf, copy)
        lines += [f"[models.{name}]", 'role = "chat"', 'backend = "llamacpp"']
        lines += [f'source = "path:{copy}"', ""]
    for name, table in extra.items():
        lines += [f"[models.{name}]", table, ""]
    (settings.data_dir / "models.toml").write_text("\n".join(lines), encoding="utf-8")
    engine = ChatEngineConfig(
        model_path=tiny_gguf,
        model_id="tiny",
        n_ctx=2048,
        n_slots=4,
        llamacpp=LlamaCppOptions(host_cache_bytes=0),
    )
    per_model = tiny_gguf.stat().st_size + 2048 * 256  # weights + KV (see the estimate test)
    budget_mb = (3 * per_model + per_model // 2) >> 20  # the default and two more
    return dataclasses.replace(settings, chat_engine=engine, model_memory_mb=budget_mb)


async def live_facts(pool: asyncpg.Pool, user_id: uuid.UUID) -> list[str]:
    """The user's current facts (semantic memories not superseded), oldest first."""
    rows = await pool.fetch(
        "SELECT content FROM memories WHERE user_id = $1 AND kind = 'semantic' "
        "AND superseded_by IS NULL ORDER BY id",
        user_id,
    )
    return [r["content"] for r in rows]
