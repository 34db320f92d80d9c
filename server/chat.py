"""One chat turn, end to end: the companion API's single orchestrator.

1. Load the session and the recent history; the conversation must be the user's.
2. Concurrently: classify the message (emotion; content with the session as
   context) and retrieve long-term memories.
3. Route (`server.routing`): persona and model by content, age gate, lock-in,
   crisis, blocks. The session update is atomic.
4. Store the user's message durably, before generating: a client that goes
   away mid-reply still has its message kept.
5. Build the prompt with the most stable parts first, so each turn's prompt
   extends the previous one and the engine reuses its KV: persona (declared
   public: shared by every user of the persona) -> summary -> history ->
   volatile context (memories, emotion hint) -> the new message. The volatile
   block is not kept in the history, so the next turn's cache reuse ends where
   this turn's block began (the persona, summary and older history are reused;
   the last exchange is recomputed). Keeping the block in the history would
   make the prefix exact at the price of a longer prompt every turn.
6. Generate at interactive priority and relay the tokens; store the reply.

7. Queue fact extraction for the background worker, unless routing said the
   turn must not be remembered (``minor_sexual``).

This first version has no idempotency keys, rate limits, response cache or
panel yet (see the issue notes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import msgspec

from inference.classifiers.content import ContentClassifier, ContentContext, ContentResult
from inference.classifiers.emotion import EmotionClassifier, EmotionResult
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.types import ChatMessage, GenerationRequest, Priority, SamplingParams, TextDelta
from memory.accounts import AccountStore
from memory.conversation_log import ConversationLog
from memory.jobs import enqueue_extraction, enqueue_summary
from memory.longterm import LongTermMemory, RetrievedMemory
from memory.session import SessionState, SessionStore
from server.memory_jobs import MemoryJobs
from server.personas import Persona
from server.routing import RouteDecision, apply_changes, decide_route

MEMORY_TOKEN_BUDGET = 600


class TurnMeta(msgspec.Struct):
    route: str
    persona: str
    model: str
    emotion: str
    emotion_confidence: float
    content_label: str
    needs_verification: bool
    memories_used: list[int]


class TurnDone(msgspec.Struct):
    user_message_id: int
    assistant_message_id: int
    usage: dict[str, int]
    timings: dict[str, float]


@dataclass
class TurnParts:
    """Everything gathered before generation."""

    session: SessionState
    history: list[ChatMessage]
    summary: str | None
    emotion: EmotionResult
    content: ContentResult
    memories: list[RetrievedMemory]
    decision: RouteDecision
    timings: dict[str, float] = field(default_factory=dict)


class ChatTurnService:
    """Runs turns; one instance per process, shared by requests."""

    def __init__(
        self,
        engine: Engine | None,
        log: ConversationLog,
        sessions: SessionStore,
        memories: LongTermMemory,
        emotions: EmotionClassifier,
        content: ContentClassifier,
        personas: dict[str, Persona],
        accounts: AccountStore,
        jobs: MemoryJobs | None = None,
    ) -> None:
        self._engine = engine
        self._log = log
        self._sessions = sessions
        self._memories = memories
        self._emotions = emotions
        self._content = content
        self._personas = personas
        self._jobs = jobs
        self._accounts = accounts

    async def turn(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, text: str
    ) -> AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]:
        """The turn as events: one `TurnMeta`, `TextDelta`s, then one `TurnDone`."""
        engine = self._require_engine()
        started = time.perf_counter()
        parts = await self._gather(user_id, conversation_id, text)
        user_message = await self._log.append(conversation_id, user_id, "user", text)
        parts.timings["prepare_s"] = time.perf_counter() - started
        persona = self._persona(parts.decision.persona)
        yield self._meta(parts, persona)
        request = self._request(user_id, conversation_id, persona, parts, text)
        reply: list[str] = []
        usage: dict[str, int] = {}
        async with aclosing(engine.generate(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    reply.append(event.text)
                    yield event
                else:
                    usage = dataclasses.asdict(event.usage)
                    parts.timings["engine_ttft_s"] = event.timings.time_to_first_token_s or 0.0
        answer = await self._log.append(
            conversation_id, user_id, "assistant", "".join(reply), _route_metadata(parts)
        )
        parts.timings["total_s"] = time.perf_counter() - started
        await self._queue_memory_work(user_id, conversation_id, answer.id, parts)
        yield TurnDone(user_message.id, answer.id, usage, parts.timings)

    async def _queue_memory_work(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, reply_id: int, parts: TurnParts
    ) -> None:
        """Queue fact extraction and the summary check (never raises); nothing from a
        blocked turn is remembered."""
        if self._jobs is None or not parts.decision.store_in_memory:
            return
        turn = 1 + sum(1 for m in parts.history if m.role == "user")
        await enqueue_extraction(
            self._jobs.queue,
            self._jobs.config,
            user_id=user_id,
            conversation_id=conversation_id,
            last_message_id=reply_id,
            turn_number=turn,
        )
        await enqueue_summary(
            self._jobs.queue,
            self._jobs.config,
            user_id=user_id,
            conversation_id=conversation_id,
            last_message_id=reply_id,
        )

    async def _gather(self, user_id: uuid.UUID, conversation_id: uuid.UUID, text: str) -> TurnParts:
        history, session, minor = await asyncio.gather(
            self._log.history(conversation_id, user_id),
            self._sessions.get_or_create(conversation_id, user_id),
            self._accounts.is_minor(user_id),
        )
        context = ContentContext(
            recent_labels=(session.last_content_label,) if session.last_content_label else (),
            route=session.route,
            route_lock_remaining=session.route_lock_remaining,
            minor=minor,
        )
        emotion, content, memories = await asyncio.gather(
            self._emotions.classify(text),
            self._content.classify(text, context),
            self._memories.retrieve(user_id, text, k=5, token_budget=MEMORY_TOKEN_BUDGET),
        )
        decision = await self._route(conversation_id, user_id, content, minor)
        return TurnParts(
            session=session,
            history=[ChatMessage(m.role, m.content) for m in history.messages],
            summary=history.summary.text if history.summary else None,
            emotion=emotion,
            content=content,
            memories=list(memories),
            decision=decision,
        )

    async def _route(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        content: ContentResult,
        minor: bool,
    ) -> RouteDecision:
        decided: list[RouteDecision] = []

        def route(state: SessionState) -> SessionState:
            decided.clear()  # the update may be retried: keep the last decision
            decided.append(decide_route(state, content, minor=minor))
            return apply_changes(state, decided[0].changes)

        await self._sessions.update(conversation_id, user_id, route)
        return decided[0]

    def _request(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        persona: Persona,
        parts: TurnParts,
        text: str,
    ) -> GenerationRequest:
        messages = [ChatMessage("system", persona.prompt)]
        if parts.summary:
            messages.append(ChatMessage("system", f"Earlier in this conversation: {parts.summary}"))
        messages.extend(parts.history)
        context = _volatile_context(parts)
        if context:
            messages.append(ChatMessage("system", context))
        messages.append(ChatMessage("user", text))
        return GenerationRequest(
            request_id=f"turn-{uuid.uuid4().hex}",
            user_id=str(user_id),
            conversation_id=str(conversation_id),
            messages=messages,
            sampling=SamplingParams(
                temperature=persona.temperature,
                top_p=persona.top_p,
                max_tokens=persona.max_tokens,
            ),
            priority=Priority.INTERACTIVE,
            public_prefix_messages=1,  # the persona prompt: operator text, no user data
        )

    def _meta(self, parts: TurnParts, persona: Persona) -> TurnMeta:
        decision = parts.decision
        return TurnMeta(
            route=decision.route,
            persona=persona.id,
            model=decision.model,
            emotion=parts.emotion.label,
            emotion_confidence=round(parts.emotion.confidence, 3),
            content_label=parts.content.label,
            needs_verification=decision.needs_verification,
            memories_used=[m.id for m in parts.memories],
        )

    def _persona(self, persona_id: str) -> Persona:
        return self._personas.get(persona_id) or self._personas["companion"]

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise EngineUnavailable("no chat engine is configured")
        return self._engine


def _volatile_context(parts: TurnParts) -> str:
    lines = []
    if parts.memories:
        remembered = "; ".join(m.content for m in parts.memories)
        lines.append(f"Things you remember about this person: {remembered}")
    if parts.emotion.label != "neutral":
        lines.append(f"They seem to feel {parts.emotion.label} right now.")
    if parts.decision.needs_verification:
        lines.append(
            "They asked for adult content, which needs age verification first: say so kindly"
            " and keep the conversation friendly."
        )
    return "\n".join(lines)


def _route_metadata(parts: TurnParts) -> dict[str, Any]:
    decision = parts.decision
    return {
        "route": decision.route,
        "persona": decision.persona,
        "reasons": list(decision.reasons) + list(parts.content.reasons),
        "emotion": parts.emotion.label,
        "content_label": parts.content.label,
        "store_in_memory": decision.store_in_memory,
    }
