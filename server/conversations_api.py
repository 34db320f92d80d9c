"""Personas, conversations and the chat turn of the companion API.

A conversation that does not exist and one that belongs to someone else get
the same 404: the API never reveals that another user's conversation exists.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from inference.errors import EngineUnavailable, InferenceError
from inference.types import TextDelta
from memory.accounts import AccountStore, Caller
from memory.messages import (
    Conversation,
    ConversationNotFoundError,
    ConversationOwnerError,
    ConversationStore,
    MessageStore,
    StoredMessage,
)
from server.auth import resolve_user
from server.chat import TurnDone, TurnMeta
from server.personas import PersonaCard, cards
from server.routing import InvalidDateOfBirth, apply_verification
from server.routing import verify_age as check_age


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    persona: str = "companion"
    title: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class DateOfBirth(msgspec.Struct, forbid_unknown_fields=True):
    date_of_birth: date


class Verification(msgspec.Struct):
    verified: bool


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]


class TurnReply(msgspec.Struct):
    reply: str
    meta: TurnMeta
    done: TurnDone


TurnEvents = AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
        return cards(state.resources.personas)

    @post("/conversations", status_code=201)
    async def create(
        self, data: JSONBody[NewConversation], state: State, user: NamedDependency[Caller]
    ) -> ConversationBody:
        persona = state.resources.personas.get(data.persona)
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
        await _owned(pool, conversation_id, user)
        return await MessageStore(pool).page(conversation_id, before, limit)

    @post("/conversations/{conversation_id:uuid}/messages", status_code=200)
    async def send(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[MessageIn],
        request: Request[Any, Any, Any],
        state: State,
        user: NamedDependency[Caller],
    ) -> Response[Any]:
        """One turn: SSE (``meta``, ``token``..., ``done``) or, without it, the whole reply."""
        chat = state.resources.chat
        if chat is None:
            raise EngineUnavailable("chat needs a chat engine and an embedding model")
        text = data.content.strip()
        if not text:
            raise ValidationException("content must not be blank")
        await _owned(state.resources.pool, conversation_id, user)
        events = chat.turn(uuid.UUID(user.user_id), conversation_id, text)
        first = await anext(events)  # refusals become HTTP errors before streaming starts
        if "text/event-stream" in request.headers.get("accept", ""):
            stream = _sse(first, events)
            return Stream(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        return Response(await _collect(first, events))

    @post("/conversations/{conversation_id:uuid}/verify-age", status_code=200)
    async def verify_age(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[DateOfBirth],
        state: State,
        user: NamedDependency[Caller],
    ) -> Verification:
        """A self-declared date of birth: 18+ verifies this conversation's session; under
        18 flags the user as a minor for good (no later date verifies them)."""
        resources = state.resources
        await _owned(resources.pool, conversation_id, user)
        now = datetime.now(UTC)
        try:
            verification = check_age(data.date_of_birth, now.date())
        except InvalidDateOfBirth as exc:
            raise ValidationException(str(exc)) from exc
        user_id = uuid.UUID(user.user_id)
        accounts = AccountStore(resources.pool)
        if verification.mark_minor:
            await accounts.mark_minor(user_id)
        minor = await accounts.is_minor(user_id)
        sessions = resources.sessions()
        await sessions.get_or_create(conversation_id, user_id)
        updated = await sessions.update(
            conversation_id,
            user_id,
            lambda s: apply_verification(s, verification, minor=minor, now=now),
        )
        return Verification(verified=updated.age_verified)


async def _owned(pool: Any, conversation_id: uuid.UUID, user: Caller) -> None:
    try:
        await ConversationStore(pool).get(conversation_id, uuid.UUID(user.user_id))
    except (ConversationNotFoundError, ConversationOwnerError) as exc:
        raise NotFoundException("conversation not found") from exc


def _event(name: str, body: object) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + msgspec.json.encode(body) + b"\n\n"


async def _sse(first: object, events: TurnEvents) -> AsyncIterator[bytes]:
    yield _event("meta", first)
    try:
        async for event in events:
            if isinstance(event, TextDelta):
                yield _event("token", {"text": event.text})
            else:
                yield _event("done", event)
    except InferenceError as exc:  # headers are sent: report in the stream
        yield _event("error", {"code": type(exc).__name__, "message": str(exc)})
    finally:
        await events.aclose()


async def _collect(first: object, events: TurnEvents) -> TurnReply:
    parts: list[str] = []
    done = None
    async for event in events:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, TurnDone):
            done = event
    assert isinstance(first, TurnMeta) and done is not None
    return TurnReply("".join(parts), first, done)
