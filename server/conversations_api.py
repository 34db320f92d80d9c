"""Personas, conversations and the chat turn of the companion API.

A conversation that does not exist and one that belongs to someone else get
the same 404: the API never reveals that another user's conversation exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, Parameter

from inference.errors import EngineUnavailable
from memory.accounts import AccountStore, Caller
from memory.db import BIGINT_MAX
from memory.errors import ConversationNotFoundError, ConversationOwnerError
from memory.messages import Conversation, ConversationStore, MessageStore, StoredMessage
from memory.users import UserData
from server.auth import resolve_user
from server.concurrency import GenerationGuard
from server.idempotency import Claim, TurnReply
from server.memories_api import long_term_memory
from server.personas import PersonaCard, cards
from server.routing import InvalidDateOfBirth, apply_verification
from server.routing import verify_age as check_age
from server.sse import UNCOMPRESSED
from server.turn.errors import NothingToAnswer, NotLastMessage, UnknownPersona
from server.turn.orchestrator import ChatTurnService
from server.turn.responder import TurnEvents, TurnResponder, provide_responder


class NewConversation(msgspec.Struct, forbid_unknown_fields=True):
    persona: str = "companion"
    title: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class ConversationChange(msgspec.Struct, forbid_unknown_fields=True):
    title: Annotated[str, msgspec.Meta(max_length=200)]


class DateOfBirth(msgspec.Struct, forbid_unknown_fields=True):
    date_of_birth: date


class Verification(msgspec.Struct):
    verified: bool


class MessageIn(msgspec.Struct, forbid_unknown_fields=True):
    content: str  # length limits: COMPANION_MAX_MESSAGE_CHARS, checked in the handler


_TURN = {"rate_limit": "turn", UNCOMPRESSED: True}
# the routes that generate: one user's share of them is capped (`server.concurrency`)
_GENERATES: dict[str, Any] = {"status_code": 200, "opt": _TURN, "middleware": [GenerationGuard]}


class PanelIn(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    personas: list[str]


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


@dataclass(frozen=True, slots=True)
class TurnCall:
    """What the handlers that generate share: the caller, the turn service and the
    responder. The checks run in the order the handler calls them (a blank message is
    a 422 even where no chat engine is configured)."""

    resources: Any
    request: Request[Any, Any, Any]
    user_id: uuid.UUID
    responder: TurnResponder

    def text(self, content: str) -> str:
        """The message, checked: not blank, not over ``COMPANION_MAX_MESSAGE_CHARS``."""
        return _message_text(content, self.resources.settings.max_message_chars)

    def chat(self) -> ChatTurnService:
        """The turn service (503 without a chat engine and an embedding model)."""
        if self.resources.chat is None:
            raise EngineUnavailable("chat needs a chat engine and an embedding model")
        chat: ChatTurnService = self.resources.chat
        return chat

    async def owned(self, conversation_id: uuid.UUID) -> Conversation:
        """The caller's conversation (404 when missing or another user's)."""
        with _not_found():
            return await ConversationStore(self.resources.pool).get(conversation_id, self.user_id)

    async def open(
        self, conversation_id: uuid.UUID, content: str
    ) -> tuple[str, ChatTurnService, Conversation]:
        """The checks of a turn with a message: the text, the service, the conversation."""
        text, chat = self.text(content), self.chat()
        return text, chat, await self.owned(conversation_id)

    async def claim(self, conversation_id: uuid.UUID, text: str) -> Claim | TurnReply | None:
        return await self.responder.claim(self.request, self.user_id, conversation_id, text)

    def replay(self, reply: TurnReply) -> Response[Any]:
        return self.responder.replay(self.request, reply)

    async def respond(self, events: TurnEvents, claim: Claim | None = None) -> Response[Any]:
        return await self.responder.respond(self.request, events, claim)


def _turn_call(
    state: State,
    request: Request[Any, Any, Any],
    user: NamedDependency[Caller],
    responder: NamedDependency[TurnResponder],
) -> TurnCall:
    return TurnCall(state.resources, request, uuid.UUID(user.user_id), responder)


class ConversationsController(Controller):
    path = "/api/v1"
    tags = ["conversations"]
    opt = {"rate_limit": "api"}
    dependencies = {
        "user": Provide(resolve_user),
        "responder": Provide(provide_responder, sync_to_thread=False),
        "call": Provide(_turn_call, sync_to_thread=False),
    }

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

    @patch("/conversations/{conversation_id:uuid}")
    async def rename(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[ConversationChange],
        state: State,
        user: NamedDependency[Caller],
    ) -> ConversationBody:
        """A new title (untitled conversations are named after their first message)."""
        title = " ".join(data.title.split())
        if not title:
            raise ValidationException("title must not be blank")
        store = ConversationStore(state.resources.pool)
        with _not_found():
            return _body(await store.rename(conversation_id, uuid.UUID(user.user_id), title))

    @delete("/conversations/{conversation_id:uuid}", status_code=204)
    async def delete_conversation(
        self, conversation_id: FromPath[uuid.UUID], state: State, user: NamedDependency[Caller]
    ) -> None:
        """The conversation, its messages, summary and session state. What was remembered
        from it stays in the user's memories, each of which can be forgotten."""
        resources = state.resources
        data = UserData(resources.pool, resources.redis, long_term_memory(state))
        with _not_found():
            await data.delete_conversation(conversation_id, uuid.UUID(user.user_id))

    @get("/conversations/{conversation_id:uuid}/messages")
    async def messages(
        self,
        conversation_id: FromPath[uuid.UUID],
        state: State,
        user: NamedDependency[Caller],
        before: Annotated[int | None, Parameter(query="before", ge=1, le=BIGINT_MAX)] = None,
        limit: Annotated[int, Parameter(query="limit", ge=1, le=200)] = 50,
    ) -> list[StoredMessage]:
        pool = state.resources.pool
        await _owned(pool, conversation_id, user)
        return await MessageStore(pool).page(conversation_id, before, limit)

    @post("/conversations/{conversation_id:uuid}/messages", **_GENERATES)
    async def send(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[MessageIn],
        call: NamedDependency[TurnCall],
    ) -> Response[Any]:
        """One turn: SSE (``meta``, ``token``..., ``done``) or, without it, the whole reply.

        With an ``Idempotency-Key`` header a retry returns the first turn (`server.idempotency`).
        """
        text, chat, conversation = await call.open(conversation_id, data.content)
        claim = await call.claim(conversation_id, text)
        if isinstance(claim, TurnReply):
            return call.replay(claim)
        events = chat.turn(call.user_id, conversation_id, text, conversation.persona)
        return await call.respond(events, claim)

    @post("/conversations/{conversation_id:uuid}/regenerate", **_GENERATES)
    async def regenerate(
        self,
        conversation_id: FromPath[uuid.UUID],
        call: NamedDependency[TurnCall],
    ) -> Response[Any]:
        """A new reply to the last user message, as ``send`` gives it, without storing the
        message again: after a failed or stopped turn, or to replace a reply the user did
        not like (the new one replaces it when complete). 409 when there is no message."""
        chat = call.chat()
        conversation = await call.owned(conversation_id)
        events = chat.regenerate(call.user_id, conversation_id, conversation.persona)
        with _conflict():
            return await call.respond(events)

    @patch("/conversations/{conversation_id:uuid}/messages/{message_id:int}", **_GENERATES)
    async def edit(
        self,
        conversation_id: FromPath[uuid.UUID],
        message_id: Annotated[int, Parameter(ge=1, le=BIGINT_MAX)],
        data: JSONBody[MessageIn],
        call: NamedDependency[TurnCall],
    ) -> Response[Any]:
        """The user's last message changed, and answered anew: the turn's events as ``send``
        gives them; the old message and its replies are replaced (new ids). 409 when the
        message is not the user's last one."""
        text, chat, conversation = await call.open(conversation_id, data.content)
        events = chat.edit(call.user_id, conversation_id, message_id, text, conversation.persona)
        with _conflict():
            return await call.respond(events)

    @post("/conversations/{conversation_id:uuid}/panel", **_GENERATES)
    async def panel(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[PanelIn],
        call: NamedDependency[TurnCall],
    ) -> Response[Any]:
        """Several personas answer one message in parallel: SSE ``meta``, ``token``s tagged
        with their persona, a ``reply`` as each finishes, ``done``; or all of it as JSON."""
        text, chat = call.text(data.content), call.chat()
        try:
            chat.panel_personas(data.personas)
        except UnknownPersona as exc:
            raise ValidationException(str(exc)) from exc
        await call.owned(conversation_id)
        events = chat.panel(call.user_id, conversation_id, text, data.personas)
        return await call.respond(events)

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


async def _owned(pool: Any, conversation_id: uuid.UUID, user: Caller) -> Conversation:
    with _not_found():
        return await ConversationStore(pool).get(conversation_id, uuid.UUID(user.user_id))


@contextmanager
def _not_found() -> Iterator[None]:
    """A conversation that is missing and one that is another user's: the same 404."""
    try:
        yield
    except (ConversationNotFoundError, ConversationOwnerError) as exc:
        raise NotFoundException("conversation not found") from exc


@contextmanager
def _conflict() -> Iterator[None]:
    """Regenerate or edit asked of a conversation that has no such message: a 409."""
    try:
        yield
    except (NothingToAnswer, NotLastMessage) as exc:
        raise ClientException(str(exc), status_code=409) from exc


def _message_text(content: str, max_chars: int) -> str:
    text = content.strip()
    if not text:
        raise ValidationException("content must not be blank")
    if len(text) > max_chars:
        raise ValidationException(f"content is longer than {max_chars} characters")
    return text
