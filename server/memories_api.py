"""What the companion remembers about the signed-in user: list, search, forget, and
remember one in their own words (the web UI's Undo after Forget saves it again this way)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt
from litestar import Controller, delete, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import JSONBody, Parameter

from inference.errors import EngineUnavailable
from memory.accounts import Caller
from memory.db import BIGINT_MAX
from memory.longterm import LongTermMemory, Memory
from server.auth import resolve_user


class _NoEmbedder:
    """Listing, searching by text, deleting, exporting and erasing never embed; this
    stands in when no embedding model is configured."""

    @property
    def dimensions(self) -> int:
        return 384

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("no embedding model is configured")


def long_term_memory(state: State) -> LongTermMemory:
    """The long-term memory store over the app's resources (also a handler dependency)."""
    resources = state.resources
    return LongTermMemory(resources.pool, resources.embedder or _NoEmbedder())


class NewMemory(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
    kind: Literal["semantic", "episodic"] = "semantic"
    importance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5


class Remembered(msgspec.Struct):
    id: int


class MemoriesController(Controller):
    path = "/api/v1/memories"
    tags = ["memories"]
    opt = {"rate_limit": "api"}
    dependencies = {
        "user": Provide(resolve_user),
        "memories": Provide(long_term_memory, sync_to_thread=False),
    }

    @get("/")
    async def list_memories(
        self,
        memories: LongTermMemory,
        user: NamedDependency[Caller],
        text: Annotated[str | None, Parameter(query="query", max_length=500)] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=100)] = 20,
    ) -> list[Memory]:
        """The user's current memories, newest first, or those matching ``?query=``."""
        user_id = uuid.UUID(user.user_id)
        if text and text.strip():
            return list(await memories.search(user_id, text, limit))
        return list(await memories.list(user_id, limit=limit))

    @post("/", status_code=201)
    async def remember(
        self,
        data: JSONBody[NewMemory],
        state: State,
        memories: LongTermMemory,
        user: NamedDependency[Caller],
    ) -> Remembered:
        """Store a memory the user wrote (no source messages, no conversation)."""
        if state.resources.embedder is None:
            raise EngineUnavailable("remembering needs the embedding model (COMPANION_EMBEDDER)")
        content = " ".join(data.content.split())
        if not content:
            raise ValidationException("content must not be blank")
        memory_id = await memories.add(
            uuid.UUID(user.user_id), data.kind, content, data.importance, []
        )
        return Remembered(memory_id)

    @delete("/{memory_id:int}")
    async def forget(
        self,
        memory_id: Annotated[int, Parameter(ge=1, le=BIGINT_MAX)],
        memories: LongTermMemory,
        user: NamedDependency[Caller],
    ) -> None:
        """Forget one memory (and the older versions it replaced); 404 if not the user's."""
        if not await memories.delete(uuid.UUID(user.user_id), memory_id):
            raise NotFoundException("memory not found")
