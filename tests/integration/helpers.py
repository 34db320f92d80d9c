"""Small helpers shared by the integration tests."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from memory.protocols import PromptMessage


async def new_user(pool: asyncpg.Pool) -> uuid.UUID:
    """A user row with a random name."""
    user_id: uuid.UUID = await pool.fetchval(
        "INSERT INTO users (username) VALUES ($1) RETURNING id", uuid.uuid4().hex
    )
    return user_id


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
