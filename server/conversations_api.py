"""Personas and conversations of the companion API (the chat turn itself comes next).

A conversation that does not exist and one that belongs to someone else get
the same 404: the API never reveals that another user's conversation exists.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, Parameter

from memory.accounts import Caller
from memory.messages import (
    Conversation,
    ConversationNotFoundError,
    ConversationOwnerError,
    ConversationStore,
    MessageStore,
    StoredMessage,
)
from server.auth import resolve_user
from server.personas import PersonaCard, cards, load_personas


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    persona: str = "companion"
    title: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class ConversationBody(msgspec.Struct):
    id: uuid.UUID
    persona: str
    title: str | None
    created_at: datetime
    updated_at: datetime


def _body(conversation: Conversation) -> ConversationBody:
    return ConversationBody(
        conversation.id,
        conversation.persona,
        conversation.title,
        conversation.created_at,
        conversation.updated_at,
    )


class ConversationsController(Controller):
    path = "/api/v1"
    tags = ["conversations"]
    dependencies = {"user": Provide(resolve_user)}

    @get("/personas")
    async def personas(self, state: State, user: NamedDependency[Caller]) -> list[PersonaCard]:
        return cards(load_personas(state.resources.settings.data_dir))

    @post("/conversations", status_code=201)
    async def create(
        self, data: JSONBody[NewConversation], state: State, user: NamedDependency[Caller]
    ) -> ConversationBody:
        personas = load_personas(state.resources.settings.data_dir)
        persona = personas.get(data.persona)
        if persona is None or not persona.selectable:
            raise ValidationException(f"unknown persona {data.persona!r}")
        store = ConversationStore(state.resources.pool)
        return _body(await store.create(uuid.UUID(user.user_id), persona.id, data.title))

    @get("/conversations")
    async def list_conversations(
        self, state: State, user: NamedDependency[Caller]
    ) -> list[ConversationBody]:
        store = ConversationStore(state.resources.pool)
        return [_body(c) for c in await store.list_for(uuid.UUID(user.user_id))]

    @get("/conversations/{conversation_id:uuid}/messages")
    async def messages(
        self,
        conversation_id: FromPath[uuid.UUID],
        state: State,
        user: NamedDependency[Caller],
        before: Annotated[int | None, Parameter(query="before", ge=1)] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=200)] = 50,
    ) -> list[StoredMessage]:
        pool = state.resources.pool
        try:
            await ConversationStore(pool).get(conversation_id, uuid.UUID(user.user_id))
        except (ConversationNotFoundError, ConversationOwnerError) as exc:
            raise NotFoundException("conversation not found") from exc
        return await MessageStore(pool).page(conversation_id, before, limit)
