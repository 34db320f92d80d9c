"""The HTTP side of a turn: one responder for single turns and panels alike.

It hands a turn's events to the client as SSE (``meta``, ``token``..., a panel's
``reply``s, ``done``; keep-alive comments while the stream is quiet) or, without
``Accept: text/event-stream``, collects them into one JSON body. It claims a send's
``Idempotency-Key`` and replays a stored turn (`server.idempotency`). Failures after
the headers went out end the stream with an ``error`` event: the inference error's
name, ``conflict`` (a newer message came while a reply was regenerated), or
``unavailable`` (the reply could not be stored: it is not acknowledged).

ARCHITECTURE: built once in the app's lifespan (it needs Redis) and injected into the
handlers with Litestar DI (`provide_responder`), so no helper reads ``state``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.datastructures import State
from litestar.response import Stream

from inference.errors import InferenceError
from inference.types import TextDelta
from memory.errors import TailMoved
from server.errors import BACKING_SERVICE_ERRORS
from server.idempotency import HEADER, Claim, IdempotencyStore, TurnReply, recorded
from server.sse import KEEPALIVE, event, with_keepalive
from server.turn.events import PanelDelta, PanelDone, PanelReply, TurnDone, TurnEvent, TurnMeta

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
TurnEvents = AsyncGenerator[TurnEvent, None]


class PanelAnswer(msgspec.Struct):
    persona: str
    reply: str
    assistant_message_id: int
    usage: dict[str, int]


class PanelResult(msgspec.Struct):
    """A panel collected: what a request without SSE gets."""

    meta: TurnMeta
    answers: list[PanelAnswer]
    done: PanelDone


class TurnResponder:
    """Responds with turns; one per app, shared by requests."""

    def __init__(self, idempotency: IdempotencyStore, keepalive_s: float) -> None:
        self._idempotency = idempotency
        self._keepalive_s = keepalive_s

    async def claim(
        self,
        request: Request[Any, Any, Any],
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
    ) -> Claim | TurnReply | None:
        """The request's claim on its ``Idempotency-Key`` (None without one), or the
        stored turn of an earlier identical request (`replay` it)."""
        key = request.headers.get(HEADER)
        if key is None:
            return None
        return await self._idempotency.claim(user_id, key, conversation_id, text)

    async def respond(
        self, request: Request[Any, Any, Any], events: TurnEvents, claim: Claim | None = None
    ) -> Response[Any]:
        """The turn's response: SSE, or all of it as JSON. The first event is awaited
        here, so a refusal becomes an HTTP error before streaming starts (and releases
        ``claim``)."""
        try:
            first = await anext(events)
        except BaseException:
            if claim is not None:
                await claim.release()
            raise
        assert isinstance(first, TurnMeta)
        turn = recorded(first, events, claim)
        if _streamed(request):
            return Stream(
                self._sse(first, turn), media_type="text/event-stream", headers=SSE_HEADERS
            )
        return Response(await _collected(first, turn))

    def replay(self, request: Request[Any, Any, Any], turn: TurnReply) -> Response[Any]:
        """A completed turn again, as its first request got it."""
        headers = {"Idempotent-Replayed": "true"}
        if not _streamed(request):
            return Response(turn, headers=headers)

        async def events() -> AsyncIterator[bytes]:
            yield event("meta", turn.meta)
            yield event("token", {"text": turn.reply})
            yield event("done", turn.done)

        return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS | headers)

    async def _sse(self, first: TurnMeta, events: TurnEvents) -> AsyncIterator[bytes]:
        yield event("meta", first)
        try:
            async for item in with_keepalive(events, self._keepalive_s):
                yield _encoded(item)
        except InferenceError as exc:  # headers are sent: report in the stream
            yield event("error", {"code": type(exc).__name__, "message": str(exc)})
        except TailMoved as exc:  # a newer message came while a reply was regenerated
            yield event("error", {"code": "conflict", "message": str(exc)})
        except BACKING_SERVICE_ERRORS as exc:
            yield _unsaved(exc)
        finally:
            await events.aclose()


def provide_responder(state: State) -> TurnResponder:
    """Litestar DI: the app's responder (built in its lifespan)."""
    responder: TurnResponder = state.responder
    return responder


def _streamed(request: Request[Any, Any, Any]) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def _encoded(item: object) -> bytes:
    """One event of a turn as SSE; anything else is a quiet spell's keep-alive."""
    if isinstance(item, TextDelta):
        return event("token", {"text": item.text})
    if isinstance(item, PanelDelta):
        return event("token", {"persona": item.persona, "text": item.text})
    if isinstance(item, PanelReply):
        return event("reply", item)
    if isinstance(item, TurnDone | PanelDone):
        return event("done", item)
    return KEEPALIVE


def _unsaved(exc: Exception) -> bytes:
    """The stream's end when the turn could not be stored (PostgreSQL or Redis went away):
    the reply is not acknowledged, and the client is told so, instead of a cut stream."""
    log.warning("turn not stored: backing service unavailable", extra={"error": repr(exc)})
    message = "a backing service is unavailable; the reply was not saved; try again shortly"
    return event("error", {"code": "unavailable", "message": message})


async def _collected(first: TurnMeta, events: TurnEvents) -> TurnReply | PanelResult:
    """The whole turn as one body: a single turn's reply, or each panel persona's."""
    texts: dict[str | None, list[str]] = {}
    answers: list[PanelAnswer] = []
    done: TurnDone | PanelDone | None = None
    async for item in events:
        if isinstance(item, TextDelta | PanelDelta):
            persona = item.persona if isinstance(item, PanelDelta) else None
            texts.setdefault(persona, []).append(item.text)
        elif isinstance(item, PanelReply):
            reply = "".join(texts.get(item.persona, []))
            answers.append(PanelAnswer(item.persona, reply, item.assistant_message_id, item.usage))
        elif isinstance(item, TurnDone | PanelDone):
            done = item
    if isinstance(done, PanelDone):
        return PanelResult(first, answers, done)
    if done is None:
        raise RuntimeError("the turn ended without its done event")
    return TurnReply("".join(texts.get(None, [])), first, done)
