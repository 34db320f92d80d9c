"""Small helpers shared by the integration tests."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
from litestar import Litestar
from litestar.testing import AsyncTestClient

from memory.protocols import PromptMessage


async def new_user(pool: asyncpg.Pool) -> uuid.UUID:
    """A user row with a random name."""
    user_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO users (username) VALUES ($1) RETURNING id", uuid.uuid4().hex
    )
    return user_id


async def signed_in(client: AsyncTestClient[Litestar]) -> dict[str, str]:
    """Register and log in a new user over HTTP; its Authorization header."""
    credentials = {"username": f"u{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    await client.post("/api/v1/auth/register", json=credentials)
    token = (await client.post("/api/v1/auth/login", json=credentials)).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


def sse_events(body: str) -> list[tuple[str, dict[str, object]]]:
    """The (event, data) pairs of an SSE body; comment-only blocks are skipped."""
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


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
