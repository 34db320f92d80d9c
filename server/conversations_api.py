"""Personas, conversations and the chat turn of the companion API.

A conversation that does not exist and one that belongs to someone else get
the same 404: the API never reveals that another user's conversation exists.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ClientException, NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, Parameter
from litestar.response import Stream

from inference.errors import EngineUnavailable, InferenceError
from inference.types import TextDelta
from memory.accounts import AccountStore, Caller
from memory.db import BIGINT_MAX
from memory.messages import (
    Conversation,
    ConversationNotFoundError,
    ConversationOwnerError,
    ConversationStore,
    MessageStore,
    StoredMessage,
    TailMoved,
)
from memory.users import UserData
from server import idempotency
from server.auth import resolve_user
from server.chat import (
    ChatTurnService,
    NothingToAnswer,
    NotLastMessage,
    PanelDelta,
    PanelDone,
    PanelEvent,
    PanelMeta,
    PanelReply,
    TurnDone,
    TurnMeta,
    UnknownPersona,
)
from server.concurrency import GenerationGuard
from server.errors import BACKING_SERVICE_ERRORS
from server.idempotency import TurnEvents, TurnReply
from server.memories_api import long_term_memory
from server.personas import PersonaCard, cards
from server.routing import InvalidDateOfBirth, apply_verification
from server.routing import verify_age as check_age
from server.sse import KEEPALIVE, UNCOMPRESSED, event, with_keepalive

log = logging.getLogger(__name__)


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
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class PanelIn(msgspec.Struct, forbid_unknown_fields=True):
    content: str
    personas: list[str]


class PanelAnswer(msgspec.Struct):
    persona: str
    reply: str
    assistant_message_id: int
    usage: dict[str, int]


class PanelResult(msgspec.Struct):
    meta: PanelMeta
    answers: list[PanelAnswer]
    done: PanelDone


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
    opt = {"rate_limit": "api"}
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
        request: Request[Any, Any, Any],
        state: State,
        user: NamedDependency[Caller],
    ) -> Response[Any]:
        """One turn: SSE (``meta``, ``token``..., ``done``) or, without it, the whole reply.

        With an ``Idempotency-Key`` header a retry returns the first turn (`server.idempotency`).
        """
        resources = state.resources
        text = _message_text(data.content, resources.settings.max_message_chars)
        chat = _chat(resources)
        conversation = await _owned(resources.pool, conversation_id, user)
        user_id = uuid.UUID(user.user_id)
        streamed = "text/event-stream" in request.headers.get("accept", "")
        claim = await idempotency.claim_for(request, resources, user_id, conversation_id, text)
        if isinstance(claim, TurnReply):
            return _replay(claim, streamed)
        events = chat.turn(user_id, conversation_id, text, conversation.persona)
        return await _respond(events, claim, streamed, resources.settings.sse_keepalive_s)

    @post("/conversations/{conversation_id:uuid}/regenerate", **_GENERATES)
    async def regenerate(
        self,
        conversation_id: FromPath[uuid.UUID],
        request: Request[Any, Any, Any],
        state: State,
        user: NamedDependency[Caller],
    ) -> Response[Any]:
        """A new reply to the last user message, as ``send`` gives it, without storing the
        message again: after a failed or stopped turn, or to replace a reply the user did
        not like (the new one replaces it when complete). 409 when there is no message."""
        resources = state.resources
        chat = _chat(resources)
        conversation = await _owned(resources.pool, conversation_id, user)
        streamed = "text/event-stream" in request.headers.get("accept", "")
        events = chat.regenerate(uuid.UUID(user.user_id), conversation_id, conversation.persona)
        with _conflict():
            return await _respond(events, None, streamed, resources.settings.sse_keepalive_s)

    @patch("/conversations/{conversation_id:uuid}/messages/{message_id:int}", **_GENERATES)
    async def edit(
        self,
        conversation_id: FromPath[uuid.UUID],
        message_id: Annotated[int, Parameter(ge=1, le=BIGINT_MAX)],
        data: JSONBody[MessageIn],
        request: Request[Any, Any, Any],
        state: State,
        user: NamedDependency[Caller],
    ) -> Response[Any]:
        """The user's last message changed, and answered anew: the turn's events as ``send``
        gives them; the old message and its replies are replaced (new ids). 409 when the
        message is not the user's last one."""
        resources = state.resources
        text = _message_text(data.content, resources.settings.max_message_chars)
        chat = _chat(resources)
        conversation = await _owned(resources.pool, conversation_id, user)
        streamed = "text/event-stream" in request.headers.get("accept", "")
        events = chat.edit(
            uuid.UUID(user.user_id), conversation_id, message_id, text, conversation.persona
        )
        with _conflict():
            return await _respond(events, None, streamed, resources.settings.sse_keepalive_s)

    @post("/conversations/{conversation_id:uuid}/panel", **_GENERATES)
    async def panel(
        self,
        conversation_id: FromPath[uuid.UUID],
        data: JSONBody[PanelIn],
        request: Request[Any, Any, Any],
        state: State,
        user: NamedDependency[Caller],
    ) -> Response[Any]:
        """Several personas answer one message in parallel: SSE ``meta``, ``token``s tagged
        with their persona, a ``reply`` as each finishes, ``done``; or all of it as JSON."""
        resources = state.resources
        text = _message_text(data.content, resources.settings.max_message_chars)
        chat = _chat(resources)
        try:
            chat.panel_personas(data.personas)
        except UnknownPersona as exc:
            raise ValidationException(str(exc)) from exc
        await _owned(resources.pool, conversation_id, user)
        events = chat.panel(uuid.UUID(user.user_id), conversation_id, text, data.personas)
        first = await anext(events)
        assert isinstance(first, PanelMeta)
        if "text/event-stream" in request.headers.get("accept", ""):
            stream = _panel_sse(first, events, resources.settings.sse_keepalive_s)
            return Stream(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
        return Response(await _collect_panel(first, events))

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


def _chat(resources: Any) -> ChatTurnService:
    if resources.chat is None:
        raise EngineUnavailable("chat needs a chat engine and an embedding model")
    chat: ChatTurnService = resources.chat
    return chat


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


async def _sse(first: TurnMeta, events: TurnEvents, keepalive_s: float) -> AsyncIterator[bytes]:
    yield event("meta", first)
    try:
        async for item in with_keepalive(events, keepalive_s):
            if isinstance(item, TextDelta):
                yield event("token", {"text": item.text})
            elif isinstance(item, TurnDone):
                yield event("done", item)
            else:
                yield KEEPALIVE
    except InferenceError as exc:  # headers are sent: report in the stream
        yield event("error", {"code": type(exc).__name__, "message": str(exc)})
    except TailMoved as exc:  # a newer message came while a reply was regenerated
        yield event("error", {"code": "conflict", "message": str(exc)})
    except BACKING_SERVICE_ERRORS as exc:
        yield _unsaved(exc)
    finally:
        await events.aclose()


def _unsaved(exc: Exception) -> bytes:
    """The stream's end when the turn could not be stored (PostgreSQL or Redis went away):
    the reply is not acknowledged, and the client is told so, instead of a cut stream."""
    log.warning("turn not stored: backing service unavailable", extra={"error": repr(exc)})
    message = "a backing service is unavailable; the reply was not saved; try again shortly"
    return event("error", {"code": "unavailable", "message": message})


async def _respond(
    events: TurnEvents, claim: idempotency.Claim | None, streamed: bool, keepalive_s: float
) -> Response[Any]:
    """A turn's response: SSE, or the whole reply as JSON."""
    try:
        first = await anext(events)  # refusals become HTTP errors before streaming starts
    except BaseException:
        if claim is not None:
            await claim.release()
        raise
    assert isinstance(first, TurnMeta)
    turn = idempotency.recorded(first, events, claim)
    if streamed:
        stream = _sse(first, turn, keepalive_s)
        return Stream(stream, media_type="text/event-stream", headers=_SSE_HEADERS)
    return Response(await _collect(first, turn))


def _replay(turn: TurnReply, streamed: bool) -> Response[Any]:
    """A completed turn again, as its first request got it."""
    headers = {"Idempotent-Replayed": "true"}
    if not streamed:
        return Response(turn, headers=headers)

    async def events() -> AsyncIterator[bytes]:
        yield event("meta", turn.meta)
        yield event("token", {"text": turn.reply})
        yield event("done", turn.done)

    return Stream(events(), media_type="text/event-stream", headers=_SSE_HEADERS | headers)


async def _panel_sse(
    first: PanelMeta, events: AsyncGenerator[PanelEvent, None], keepalive_s: float
) -> AsyncIterator[bytes]:
    yield event("meta", first)
    try:
        async for item in with_keepalive(events, keepalive_s):
            if isinstance(item, PanelDelta):
                yield event("token", {"persona": item.persona, "text": item.text})
            elif isinstance(item, PanelReply):
                yield event("reply", item)
            elif isinstance(item, PanelDone):
                yield event("done", item)
            else:
                yield KEEPALIVE
    except InferenceError as exc:
        yield event("error", {"code": type(exc).__name__, "message": str(exc)})
    except BACKING_SERVICE_ERRORS as exc:
        yield _unsaved(exc)
    finally:
        await events.aclose()


async def _collect_panel(first: PanelMeta, events: AsyncGenerator[PanelEvent, None]) -> PanelResult:
    texts: dict[str, list[str]] = {}
    answers: list[PanelAnswer] = []
    async for item in events:
        if isinstance(item, PanelDelta):
            texts.setdefault(item.persona, []).append(item.text)
        elif isinstance(item, PanelReply):
            reply = "".join(texts.get(item.persona, []))
            answers.append(PanelAnswer(item.persona, reply, item.assistant_message_id, item.usage))
        elif isinstance(item, PanelDone):
            return PanelResult(first, answers, item)
    raise RuntimeError("the panel ended without its done event")


async def _collect(first: object, events: TurnEvents) -> TurnReply:
    parts: list[str] = []
    done = None
    async for item in events:
        if isinstance(item, TextDelta):
            parts.append(item.text)
        elif isinstance(item, TurnDone):
            done = item
    assert isinstance(first, TurnMeta) and done is not None
    return TurnReply("".join(parts), first, done)
