"""One chat turn, end to end: the companion API's single orchestrator.

1. Load the session and the recent history; the conversation must be the user's.
2. Concurrently: classify the message (emotion; content with the session as
   context) and retrieve long-term memories.
3. Route (`server.routing`): persona and model by content, age gate, lock-in,
   crisis, blocks. The session update is atomic.
4. Build the prompt (`server.prompt`: the most stable parts first, so the
   engine reuses the KV of earlier turns) and fit it to the engine's context,
   oldest history first. A message too long for the model was refused before
   step 1 changed anything.
5. Store the user's message durably, before generating: a client that goes
   away mid-reply still has its message kept.
6. Generate at interactive priority and relay the tokens; store the reply.

7. Queue fact extraction for the background worker, unless routing said the
   turn must not be remembered (``minor_sexual``).

Timings of each step (seconds) go into the ``done`` event and into the
``companion:turn_step_seconds`` histogram: ``emotion`` and ``retrieve``
(started at once, concurrently with) ``load`` (history, session, minor flag,
profile), then ``classify`` (content, with the session as context), ``route``,
``fit`` (measuring the prompt, when it may not fit), ``store_user``, ``prepare``
(all of the above), ``ttft`` (turn start to first token),
``engine_ttft`` (the engine's own, from submission), ``overhead`` (ttft minus
engine_ttft: everything the service adds before the first token),
``store_reply`` and ``total``.

Idempotency keys and SSE keep-alives are the HTTP layer's
(`server.idempotency`, `server.sse`); rate limits run before the turn
(`server.ratelimit`); the response cache wraps the engine
(`server.response_cache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from prometheus_client import Histogram

from inference.classifiers.content import ContentClassifier, ContentContext, ContentResult
from inference.classifiers.emotion import EmotionClassifier, EmotionResult
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.types import (
    ChatMessage,
    GenerationRequest,
    Priority,
    SamplingParams,
    StreamEvent,
    TextDelta,
)
from memory.accounts import AccountStore
from memory.conversation_log import ConversationLog
from memory.jobs import enqueue_extraction, enqueue_profile_update, enqueue_summary
from memory.longterm import LongTermMemory, RetrievedMemory
from memory.messages import StoredMessage
from memory.profile import ProfileStore
from memory.session import SessionState, SessionStore
from server.complexity import message_tier
from server.memory_jobs import MemoryJobs
from server.personas import Persona
from server.prompt import PromptFitter, PromptParts
from server.routing import RouteDecision, apply_changes, decide_route

MEMORY_TOKEN_BUDGET = 600
STEP_SECONDS = Histogram(
    "companion:turn_step_seconds",
    "Seconds spent in each step of a chat turn (see server.chat)",
    ["step"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


class TurnMeta(msgspec.Struct):
    route: str
    persona: str
    model: str
    emotion: str
    emotion_confidence: float
    content_label: str
    needs_verification: bool
    memories_used: list[int]
    tier: str = "default"  # "small": short small talk answered by the small model


class TurnDone(msgspec.Struct):
    user_message_id: int
    assistant_message_id: int
    usage: dict[str, int]
    timings: dict[str, float]
    finish_reason: str = "stop"  # "length": the reply was cut at the persona's max_tokens


class PanelMeta(msgspec.Struct):
    """The panel's ``meta``: who answers and what the message was understood as.

    ``personas`` are the ones asked for, or only the route's persona when
    routing took the message off the normal route (crisis, explicit, blocked):
    safety decides before the panel does.
    """

    route: str
    personas: list[str]
    model: str
    emotion: str
    emotion_confidence: float
    content_label: str
    needs_verification: bool
    memories_used: list[int]


@dataclass(frozen=True, slots=True)
class PanelDelta:
    persona: str
    text: str


class PanelReply(msgspec.Struct):
    """One persona's finished answer (stored as an assistant message)."""

    persona: str
    assistant_message_id: int
    usage: dict[str, int]
    timings: dict[str, float]


class PanelDone(msgspec.Struct):
    user_message_id: int
    replies: list[PanelReply]
    timings: dict[str, float]


PanelEvent = PanelMeta | PanelDelta | PanelReply | PanelDone
PANEL_MAX_PERSONAS = 4
PANEL_PREAMBLE = (
    "Several companions with different voices share this conversation with the user."
    " Each message is answered by the companion named in the last instruction, in that"
    " companion's own voice, without speaking for the others."
)


class UnknownPersona(ValueError):
    """A persona that does not exist or cannot be chosen."""


class NothingToAnswer(ValueError):
    """Regenerate asked of a conversation without a user message."""


class NotLastMessage(ValueError):
    """An edit of a message that is not the user's last one in the conversation."""


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
    profile: str | None = None  # who the user is and what they work on (`memory.profile`)


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
        profiles: ProfileStore | None = None,
        small_engine: Engine | None = None,
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
        self._profiles = profiles
        self._small_engine = small_engine
        self._fitter = PromptFitter()

    def turn(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        persona_id: str = "companion",
    ) -> AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]:
        """The turn as events: one `TurnMeta`, `TextDelta`s, then one `TurnDone`.

        ``persona_id`` is the conversation's persona; it answers on the normal
        route, and the route's own persona answers on every other route.
        """
        return self._turn(user_id, conversation_id, text, persona_id, None)

    async def regenerate(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, persona_id: str = "companion"
    ) -> AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]:
        """A new reply to the conversation's last user message: the turn again, without
        storing the message a second time, as sending it again would.

        When the message has a reply (or a panel's replies), the new reply replaces it
        once it is complete; a regeneration that fails or is stopped leaves the old one
        in place. The message is understood and routed again (the session's route
        counters count it twice), and memories are retrieved anew.
        `NothingToAnswer` when the conversation has no user message.
        """
        last = await self._last_user_message(user_id, conversation_id)
        if last is None:
            raise NothingToAnswer("the conversation has no message to answer")
        async for event in self._turn(user_id, conversation_id, last.content, persona_id, last):
            yield event

    async def edit(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        message_id: int,
        text: str,
        persona_id: str = "companion",
    ) -> AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]:
        """The user's last message, changed, and a reply to it: a turn whose message and
        reply replace the old message and whatever answered it.

        The edited message is checked, understood and routed as a new one, and stored
        (replacing the old exchange) before the reply is generated, as a sent message
        is. `NotLastMessage` when ``message_id`` is not the user's last message.
        """
        last = await self._last_user_message(user_id, conversation_id)
        if last is None or last.id != message_id:
            raise NotLastMessage("only your last message can be edited")
        async for event in self._turn(user_id, conversation_id, text, persona_id, None, message_id):
            yield event

    async def _last_user_message(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID
    ) -> StoredMessage | None:
        """The user's last message (None: none since the rolling summary)."""
        messages = (await self._log.history(conversation_id, user_id)).messages
        return next((m for m in reversed(messages) if m.role == "user"), None)

    async def _turn(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        persona_id: str,
        regenerating: StoredMessage | None,
        edited: int | None = None,
    ) -> AsyncGenerator[TurnMeta | TextDelta | TurnDone, None]:
        """A turn; ``regenerating``: the stored message it answers anew (`regenerate`),
        else ``text`` is checked and stored, replacing the message ``edited`` and its
        replies when given (`edit`). The prompt's history ends before either."""
        engine = self._require_engine()
        clock = _Clock()
        if regenerating is None:
            await self._check_message(engine, user_id, conversation_id, persona_id, text)
        history_before = regenerating.id if regenerating is not None else edited
        parts = await self._gather(user_id, conversation_id, text, clock, history_before)
        persona = self._answering(parts.decision, persona_id)
        tier = message_tier(text, parts.decision.route, parts.content.label)
        if tier == "small" and self._small_engine is not None:
            engine = self._small_engine
        else:
            tier = "default"
        request = await clock.timed(
            "fit",
            self._fitter.fit(
                engine,
                self._prompt(persona, parts, text),
                functools.partial(self._request, user_id, conversation_id, persona),
            ),
        )
        user_message = regenerating or await self._store_user(
            user_id, conversation_id, text, parts, clock, edited
        )
        clock.mark("prepare")
        yield self._meta(parts, persona, engine, tier)
        reply: list[str] = []
        usage: dict[str, int] = {}
        finish_reason = "stop"
        async with aclosing(engine.generate(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    if not reply:
                        clock.mark("ttft")
                    reply.append(event.text)
                    yield event
                else:
                    usage = dataclasses.asdict(event.usage)
                    finish_reason = event.finish_reason
                    clock.record("engine_ttft", event.timings.time_to_first_token_s or 0.0)
        if not reply:  # nothing generated (an immediate end): the first "token" is the end
            clock.mark("ttft")
        overhead = clock.seconds["ttft"] - clock.seconds.get("engine_ttft", 0.0)
        clock.record("overhead", max(0.0, overhead))
        metadata = _route_metadata(parts) | {
            "persona": persona.id,
            "model": engine.model_id,
            "finish_reason": finish_reason,
        }
        answer = await clock.timed(
            "store_reply",
            self._store_reply(
                user_id,
                conversation_id,
                "".join(reply),
                metadata,
                user_message,
                regenerating is not None,
            ),
        )
        clock.mark("total")
        await self._queue_memory_work(user_id, conversation_id, answer.id, parts)
        yield TurnDone(user_message.id, answer.id, usage, clock.report(), finish_reason)

    def panel_personas(self, persona_ids: list[str]) -> list[Persona]:
        """The personas of a panel request; `UnknownPersona` for bad ones."""
        if not 1 <= len(persona_ids) <= PANEL_MAX_PERSONAS or len(set(persona_ids)) != len(
            persona_ids
        ):
            raise UnknownPersona(f"give 1 to {PANEL_MAX_PERSONAS} different personas")
        chosen = [self._personas.get(p) for p in persona_ids]
        if any(p is None or not p.selectable for p in chosen):
            raise UnknownPersona(f"unknown persona among {persona_ids}")
        return [p for p in chosen if p is not None]

    async def panel(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        persona_ids: list[str],
    ) -> AsyncGenerator[PanelEvent, None]:
        """Several personas answer one message at once: `PanelMeta`, then `PanelDelta`s
        interleaved as they come, a `PanelReply` as each finishes, and `PanelDone`.

        Their prompts differ only in a last instruction naming the persona, so
        the engine computes the conversation once and shares it (the same
        user's concurrent prompts share their common prefix).
        """
        engine = self._require_engine()
        personas = self.panel_personas(persona_ids)
        clock = _Clock()
        await self._check_message(engine, user_id, conversation_id, personas[0].id, text)
        parts = await self._gather(user_id, conversation_id, text, clock)
        if parts.decision.route != "normal":
            personas = [self._persona(parts.decision.persona)]
        shared = dataclasses.replace(self._persona("companion"), prompt=PANEL_PREAMBLE)
        requests = {}
        for persona in personas:
            voice = f"Answer now as {persona.name}. {persona.prompt}"
            request_for = functools.partial(self._panel_request, user_id, conversation_id, persona)
            prompt = dataclasses.replace(self._prompt(shared, parts, text), voice=voice)
            requests[persona.id] = await clock.timed(
                "fit", self._fitter.fit(engine, prompt, request_for)
            )
        user_message = await self._store_user(user_id, conversation_id, text, parts, clock)
        clock.mark("prepare")
        yield self._panel_meta(parts, personas)
        replies: list[PanelReply] = []
        texts: dict[str, list[str]] = {p.id: [] for p in personas}
        async with aclosing(_merged(engine, requests)) as events:
            async for persona_id, event in events:
                if isinstance(event, TextDelta):
                    texts[persona_id].append(event.text)
                    yield PanelDelta(persona_id, event.text)
                    continue
                metadata = _route_metadata(parts) | {
                    "persona": persona_id,
                    "model": engine.model_id,
                    "panel": True,
                }
                stored = await self._log.append(
                    conversation_id, user_id, "assistant", "".join(texts[persona_id]), metadata
                )
                reply = PanelReply(
                    persona_id,
                    stored.id,
                    dataclasses.asdict(event.usage),
                    {"engine_ttft_s": event.timings.time_to_first_token_s or 0.0},
                )
                replies.append(reply)
                yield reply
        clock.mark("total")
        if replies:
            await self._queue_memory_work(
                user_id, conversation_id, replies[-1].assistant_message_id, parts
            )
        yield PanelDone(user_message.id, replies, clock.report())

    def _panel_request(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        persona: Persona,
        prompt: PromptParts,
    ) -> GenerationRequest:
        return dataclasses.replace(
            self._request(user_id, conversation_id, persona, prompt),
            request_id=f"panel-{persona.id}-{uuid.uuid4().hex}",
        )

    def _panel_meta(self, parts: TurnParts, personas: list[Persona]) -> PanelMeta:
        meta = self._meta(parts, personas[0], self._require_engine())
        return PanelMeta(
            route=meta.route,
            personas=[p.id for p in personas],
            model=meta.model,
            emotion=meta.emotion,
            emotion_confidence=meta.emotion_confidence,
            content_label=meta.content_label,
            needs_verification=meta.needs_verification,
            memories_used=meta.memories_used,
        )

    async def _queue_memory_work(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, reply_id: int, parts: TurnParts
    ) -> None:
        """Queue fact extraction, the profile update and the summary check (they never
        raise); nothing from a blocked turn is remembered."""
        if self._jobs is None or not parts.decision.store_in_memory:
            return
        # counted durably: the history holds only what follows the rolling summary
        turn = await self._log.user_turns(conversation_id)
        for enqueue in (enqueue_extraction, enqueue_profile_update):
            await enqueue(
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

    async def _check_message(
        self,
        engine: Engine,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        persona_id: str,
        text: str,
    ) -> None:
        """Refuse a message too long for the model before the turn changes anything."""
        persona = self._persona(persona_id)
        alone = PromptParts(persona.prompt, text)
        request = self._request(user_id, conversation_id, persona, alone)
        await self._fitter.check_message(engine, request)

    async def _store_user(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        parts: TurnParts,
        clock: _Clock,
        edited: int | None = None,
    ) -> StoredMessage:
        """The message, with how it was understood (the page shows it after a reload);
        ``edited``: the user message it replaces, with its replies."""
        emotion = parts.emotion
        understood = {"emotion": emotion.label, "emotion_confidence": round(emotion.confidence, 3)}
        if edited is None:
            stored = self._log.append(conversation_id, user_id, "user", text, understood)
            return await clock.timed("store_user", stored)
        replaced = self._log.replace_tail(
            conversation_id, user_id, edited, "user", text, understood
        )
        return (await clock.timed("store_user", replaced)).message

    async def _store_reply(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        reply: str,
        metadata: dict[str, Any],
        user_message: StoredMessage,
        regenerated: bool,
    ) -> StoredMessage:
        """The reply, appended; a regenerated one replaces whatever answered its message
        before, if anything (`TailMoved` when a newer message came meanwhile: the newer
        exchange stays, and two regenerations never leave two replies)."""
        if not regenerated:
            return await self._log.append(conversation_id, user_id, "assistant", reply, metadata)
        replaced = await self._log.replace_tail(
            conversation_id, user_id, user_message.id, "assistant", reply, metadata
        )
        return replaced.message

    async def _gather(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        clock: _Clock,
        history_before: int | None = None,
    ) -> TurnParts:
        # Emotion and retrieval need only the message: they start at once, while the
        # session and history load; content classification needs the session as context
        # and then finds the message's embedding already made.
        early = asyncio.gather(
            clock.timed("emotion", self._emotions.classify(text)),
            clock.timed(
                "retrieve",
                self._memories.retrieve(user_id, text, k=5, token_budget=MEMORY_TOKEN_BUDGET),
            ),
        )
        try:
            history, session, minor, profile = await clock.timed(
                "load",
                asyncio.gather(
                    self._log.history(conversation_id, user_id),
                    self._sessions.get_or_create(conversation_id, user_id),
                    self._accounts.is_minor(user_id),
                    self._profile_hint(user_id),
                ),
            )
            context = ContentContext(
                recent_labels=(session.last_content_label,) if session.last_content_label else (),
                route=session.route,
                route_lock_remaining=session.route_lock_remaining,
                minor=minor,
            )
            content = await clock.timed("classify", self._content.classify(text, context))
            emotion, memories = await early
        except BaseException:
            early.cancel()
            with contextlib.suppress(BaseException):
                await early
            raise
        if content.declares_minor and not minor:  # "I'm 15": the same as a date of birth
            await self._accounts.mark_minor(user_id)
            minor = True
        decision = await clock.timed("route", self._route(conversation_id, user_id, content, minor))
        return TurnParts(
            session=session,
            history=[
                ChatMessage(m.role, m.content)
                for m in history.messages
                # a regenerated or edited message comes last, as the message
                if history_before is None or m.id < history_before
            ],
            summary=history.summary.text if history.summary else None,
            emotion=emotion,
            content=content,
            memories=_not_drawn_from(memories, history.messages, history_before),
            decision=decision,
            profile=profile,
        )

    async def _profile_hint(self, user_id: uuid.UUID) -> str | None:
        return await self._profiles.hint(user_id) if self._profiles is not None else None

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

    def _prompt(self, persona: Persona, parts: TurnParts, text: str) -> PromptParts:
        return PromptParts(
            persona=persona.prompt,
            message=text,
            profile=parts.profile,
            summary=parts.summary,
            history=parts.history,
            context=_volatile_context(parts),
        )

    def _request(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        persona: Persona,
        prompt: PromptParts,
    ) -> GenerationRequest:
        return GenerationRequest(
            request_id=f"turn-{uuid.uuid4().hex}",
            user_id=str(user_id),
            conversation_id=str(conversation_id),
            messages=prompt.messages(),
            sampling=SamplingParams(
                temperature=persona.temperature,
                top_p=persona.top_p,
                max_tokens=persona.max_tokens,
            ),
            priority=Priority.INTERACTIVE,
            public_prefix_messages=1,  # the persona prompt: operator text, no user data
        )

    def _meta(
        self, parts: TurnParts, persona: Persona, engine: Engine, tier: str = "default"
    ) -> TurnMeta:
        decision = parts.decision
        return TurnMeta(
            route=decision.route,
            persona=persona.id,
            model=engine.model_id,  # the model that answers
            tier=tier,
            emotion=parts.emotion.label,
            emotion_confidence=round(parts.emotion.confidence, 3),
            content_label=parts.content.label,
            needs_verification=decision.needs_verification,
            memories_used=[m.id for m in parts.memories],
        )

    def _persona(self, persona_id: str) -> Persona:
        return self._personas.get(persona_id) or self._personas["companion"]

    def _answering(self, decision: RouteDecision, persona_id: str) -> Persona:
        """Who answers: the chosen persona on the normal route, the route's persona otherwise."""
        return self._persona(persona_id if decision.route == "normal" else decision.persona)

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


def _not_drawn_from(
    memories: list[RetrievedMemory], messages: list[StoredMessage], replaced_from: int | None
) -> list[RetrievedMemory]:
    """The memories, less those quoting the exchange a regeneration or edit replaces (an
    episode already extracted from it would put the old reply back into the prompt)."""
    replaced = {m.id for m in messages if replaced_from is not None and m.id >= replaced_from}
    return [m for m in memories if replaced.isdisjoint(m.source_message_ids)]


def _route_metadata(parts: TurnParts) -> dict[str, Any]:
    """What a stored reply keeps of its turn; the callers add who answered (``persona``,
    ``model``): the route's persona is not always the one that answers."""
    decision = parts.decision
    return {
        "route": decision.route,
        "route_persona": decision.persona,
        "reasons": list(decision.reasons) + list(parts.content.reasons),
        "emotion": parts.emotion.label,
        "content_label": parts.content.label,
        "store_in_memory": decision.store_in_memory,
    }


T = TypeVar("T")


class _Clock:
    """Step timings of one turn, in seconds: `timed` awaits, `mark` since the start."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    async def timed(self, step: str, work: Awaitable[T]) -> T:
        begun = time.perf_counter()
        try:
            return await work
        finally:
            self.record(step, time.perf_counter() - begun)

    def mark(self, step: str) -> None:
        self.record(step, time.perf_counter() - self.started)

    def record(self, step: str, seconds: float) -> None:
        self.seconds[step] = seconds
        STEP_SECONDS.labels(step).observe(seconds)

    def report(self) -> dict[str, float]:
        """The ``done`` event's timings: ``<step>_s`` rounded to microseconds."""
        return {f"{step}_s": round(value, 6) for step, value in self.seconds.items()}


async def _merged(
    engine: Engine, requests: dict[str, GenerationRequest]
) -> AsyncGenerator[tuple[str, StreamEvent], None]:
    """The events of several generations as they come, each tagged with its key.

    Each generation runs in its own task; closing this generator (a client
    that went away) cancels them all, which aborts them in the engine. The
    first error of any generation is raised here after the others stop.
    """
    queue: asyncio.Queue[tuple[str, StreamEvent | BaseException | None]] = asyncio.Queue()

    async def pump(key: str, request: GenerationRequest) -> None:
        try:
            async with aclosing(engine.generate(request)) as events:
                async for event in events:
                    await queue.put((key, event))
            await queue.put((key, None))
        except Exception as exc:  # handed to the consumer, which raises it
            await queue.put((key, exc))

    tasks = [asyncio.create_task(pump(k, r), name=f"panel-{k}") for k, r in requests.items()]
    try:
        running = len(tasks)
        while running:
            key, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield key, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
