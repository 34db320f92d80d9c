"""One chat turn, end to end: the companion API's single orchestrator.

1. Load the session and the recent history; the conversation must be the user's.
2. Concurrently: classify the message (emotion; content with the session as
   context) and retrieve long-term memories (`server.turn.gather`).
3. Route (`server.routing`): persona and model by content, age gate, lock-in,
   crisis, blocks. The session update is atomic.
4. Build the prompt (`server.turn.prompt`: the most stable parts first, so the
   engine reuses the KV of earlier turns) and fit it to the engine's context,
   oldest history first (`server.turn.fit`). A message too long for the model
   was refused before step 1 changed anything.
5. Store the user's message durably, before generating: a client that goes
   away mid-reply still has its message kept (`server.turn.store`).
6. Generate at interactive priority and relay the tokens; store the reply.
7. Queue fact extraction for the background worker, unless routing said the
   turn must not be remembered (``minor_sexual``).

A panel is the same turn answered by several personas at once: one gather, one
stored user message, one prompt per persona (they differ only in the last
instruction), their generations merged (`server.turn.merge`) and each reply stored
as it finishes, by the same loop a single turn runs with one persona.

Timings of each step (seconds) go into the ``done`` event and to the
`StepObserver` (``companion:turn_step_seconds``, `server.turn.metrics`):
``emotion`` and ``retrieve`` (started at once, concurrently with) ``load``
(history, session, minor flag, profile), then ``classify`` (content, with the
session as context), ``route``, ``fit`` (measuring the prompt, when it may not
fit), ``store_user``, ``prepare`` (all of the above), ``ttft`` (turn start to
first token), ``engine_ttft`` (the engine's own, from submission), ``overhead``
(ttft minus engine_ttft: everything the service adds before the first token),
``store_reply`` and ``total``. A panel reports the steps its personas share (not
the four per-reply ones); each `PanelReply` carries its engine time to first token.

Idempotency keys and SSE keep-alives are the HTTP layer's (`server.turn.responder`);
rate limits run before the turn (`server.ratelimit`).
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from inference.classifiers.content import ContentClassifier
from inference.classifiers.emotion import EmotionClassifier
from inference.engine import Engine
from inference.errors import EngineUnavailable
from inference.types import Finished, GenerationRequest, Priority, SamplingParams, TextDelta
from memory.accounts import AccountStore
from memory.conversation_log import ConversationLog
from memory.longterm import LongTermMemory
from memory.messages import StoredMessage
from memory.profile import ProfileStore
from memory.session import SessionStore
from server.memory_jobs import MemoryJobs
from server.personas import Persona
from server.turn.errors import NothingToAnswer, NotLastMessage
from server.turn.events import (
    PanelDelta,
    PanelDone,
    PanelReply,
    TurnDone,
    TurnEvent,
)
from server.turn.fit import PromptFitter
from server.turn.gather import Gatherer, TurnParts
from server.turn.merge import merged
from server.turn.metrics import default_turn_metrics
from server.turn.prompt import PromptParts
from server.turn.stats import StepObserver, TurnClock
from server.turn.store import Conversation, TurnStore, route_metadata
from server.turn.voices import Casting, Voice, turn_meta

# a panel's replies each have these; the panel's own timings do not
PER_REPLY_STEPS = frozenset({"ttft", "engine_ttft", "overhead", "store_reply"})


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a turn is asked to do."""

    where: Conversation
    text: str
    persona_ids: Sequence[str]  # the conversation's persona, or the panel's
    panel: bool = False
    regenerating: StoredMessage | None = None  # the stored message answered anew
    edited: int | None = None  # the user message this one replaces, with its replies

    @property
    def history_before(self) -> int | None:
        """The message the prompt's history ends before (answered anew or replaced)."""
        return self.regenerating.id if self.regenerating is not None else self.edited


@dataclass(frozen=True, slots=True)
class _Answer:
    """One voice's finished reply, stored."""

    persona: str
    message: StoredMessage
    usage: dict[str, int]
    finish_reason: str
    engine_ttft_s: float


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
        observer: StepObserver | None = None,
    ) -> None:
        self._engine = engine
        self._casting = Casting(personas, small_engine)
        self._gatherer = Gatherer(log, sessions, memories, emotions, content, accounts, profiles)
        self._store = TurnStore(log, jobs)
        self._fitter = PromptFitter()
        self._observer = observer or default_turn_metrics()

    def turn(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        persona_id: str = "companion",
    ) -> AsyncGenerator[TurnEvent, None]:
        """The turn as events: one `TurnMeta`, `TextDelta`s, then one `TurnDone`.

        ``persona_id`` is the conversation's persona; it answers on the normal
        route, and the route's own persona answers on every other route.
        """
        return self._run(_Ask(Conversation(user_id, conversation_id), text, (persona_id,)))

    async def regenerate(
        self, user_id: uuid.UUID, conversation_id: uuid.UUID, persona_id: str = "companion"
    ) -> AsyncGenerator[TurnEvent, None]:
        """A new reply to the conversation's last user message: the turn again, without
        storing the message a second time, as sending it again would.

        When the message has a reply (or a panel's replies), the new reply replaces it
        once it is complete; a regeneration that fails or is stopped leaves the old one
        in place. The message is understood and routed again, from the session's
        routing counters as they were before it (so it counts once: asking again spends
        no crisis window or route lock), and memories are retrieved anew.
        `NothingToAnswer` when the conversation has no user message.
        """
        where = Conversation(user_id, conversation_id)
        last = await self._store.last_user_message(where)
        if last is None:
            raise NothingToAnswer("the conversation has no message to answer")
        ask = _Ask(where, last.content, (persona_id,), regenerating=last)
        async with aclosing(self._run(ask)) as run:
            async for event in run:
                yield event

    async def edit(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        message_id: int,
        text: str,
        persona_id: str = "companion",
    ) -> AsyncGenerator[TurnEvent, None]:
        """The user's last message, changed, and a reply to it: a turn whose message and
        reply replace the old message and whatever answered it.

        The edited message is checked, understood and routed in the old one's place (from
        the session's routing counters as they were before it), and stored
        (replacing the old exchange) before the reply is generated, as a sent message
        is. `NotLastMessage` when ``message_id`` is not the user's last message.
        """
        where = Conversation(user_id, conversation_id)
        last = await self._store.last_user_message(where)
        if last is None or last.id != message_id:
            raise NotLastMessage("only your last message can be edited")
        async with aclosing(self._run(_Ask(where, text, (persona_id,), edited=message_id))) as run:
            async for event in run:
                yield event

    def panel_personas(self, persona_ids: list[str]) -> list[Persona]:
        """The personas of a panel request; `UnknownPersona` for bad ones."""
        return self._casting.panel_personas(persona_ids)

    def panel(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        persona_ids: list[str],
    ) -> AsyncGenerator[TurnEvent, None]:
        """Several personas answer one message at once: `TurnMeta` (with ``personas``),
        then `PanelDelta`s interleaved as they come, a `PanelReply` as each finishes, and
        `PanelDone`.

        The personas asked for answer on the normal route; on any other (crisis,
        explicit, blocked) only the route's persona does: safety decides before the
        panel does. Their prompts differ only in a last instruction naming the
        persona, so the engine computes the conversation once and shares it (the same
        user's concurrent prompts share their common prefix).
        """
        self.panel_personas(persona_ids)
        ask = _Ask(Conversation(user_id, conversation_id), text, tuple(persona_ids), panel=True)
        return self._run(ask)

    async def _run(self, ask: _Ask) -> AsyncGenerator[TurnEvent, None]:
        """The one turn: gather, route, store the message, generate, store each reply."""
        engine = self._require_engine()
        clock = TurnClock(self._observer, PER_REPLY_STEPS if ask.panel else ())
        if ask.regenerating is None:
            await self._check_message(engine, ask)
        parts = await self._gatherer.gather(
            ask.where.user_id, ask.where.conversation_id, ask.text, clock, ask.history_before
        )
        voices = self._voices(ask, parts, engine)
        requests = [await clock.timed("fit", self._fit(ask, voice)) for voice in voices]
        user_message = ask.regenerating
        if user_message is None:
            stored = self._store.store_user(ask.where, ask.text, parts, ask.edited)
            user_message = await clock.timed("store_user", stored)
        clock.mark("prepare")
        yield turn_meta(parts, voices, ask.panel)
        answers: list[_Answer] = []
        async with aclosing(
            self._answers(ask, parts, list(zip(voices, requests, strict=True)), clock)
        ) as events:
            async for event in events:
                if isinstance(event, _Answer):
                    answers.append(event)
                    if ask.panel:
                        yield _panel_reply(event)
                else:
                    yield event
        if not answers:
            raise EngineUnavailable("the engine ended a generation without finishing it")
        clock.mark("total")
        await self._store.queue_memory_work(ask.where, answers[-1].message.id, parts)
        if ask.panel:
            yield PanelDone(user_message.id, [_panel_reply(a) for a in answers], clock.report())
        else:
            answer = answers[0]
            yield TurnDone(
                user_message.id,
                answer.message.id,
                answer.usage,
                clock.report(),
                answer.finish_reason,
            )

    async def _answers(
        self,
        ask: _Ask,
        parts: TurnParts,
        voices: list[tuple[Voice, GenerationRequest]],
        clock: TurnClock,
    ) -> AsyncGenerator[TextDelta | PanelDelta | _Answer, None]:
        """The engine loop: every voice's tokens as they come, and each reply stored as its
        generation finishes."""
        by_id = {v.persona.id: v for v, _ in voices}
        texts: dict[str, list[str]] = {v.persona.id: [] for v, _ in voices}
        streams = {v.persona.id: v.engine.generate(request) for v, request in voices}
        first = True
        async with aclosing(merged(streams)) as events:
            async for persona_id, event in events:
                if isinstance(event, Finished):
                    text = "".join(texts[persona_id])
                    yield await self._finish(ask, parts, by_id[persona_id], text, event, clock)
                    continue
                if first:
                    clock.mark("ttft")
                    first = False
                texts[persona_id].append(event.text)
                yield PanelDelta(persona_id, event.text) if ask.panel else event

    async def _finish(
        self,
        ask: _Ask,
        parts: TurnParts,
        voice: Voice,
        text: str,
        finished: Finished,
        clock: TurnClock,
    ) -> _Answer:
        """One voice's reply stored, with the timings its end completes."""
        engine_ttft = finished.timings.time_to_first_token_s or 0.0
        if "ttft" not in clock.seconds:  # nothing generated: the first "token" is the end
            clock.mark("ttft")
        clock.record("engine_ttft", engine_ttft)
        clock.record("overhead", max(0.0, clock.seconds.get("ttft", 0.0) - engine_ttft))
        metadata = route_metadata(parts) | {
            "persona": voice.persona.id,
            "model": voice.engine.model_id,
        }
        metadata |= {"panel": True} if ask.panel else {"finish_reason": finished.finish_reason}
        stored = await clock.timed(
            "store_reply", self._store.store_reply(ask.where, text, metadata, ask.regenerating)
        )
        usage = dataclasses.asdict(finished.usage)
        return _Answer(voice.persona.id, stored, usage, finished.finish_reason, engine_ttft)

    def _voices(self, ask: _Ask, parts: TurnParts, engine: Engine) -> list[Voice]:
        """Who answers, with prompts not yet fitted to the engine."""
        if ask.panel:
            return self._casting.panel(ask.text, ask.persona_ids, parts, engine)
        return [self._casting.single(ask.text, ask.persona_ids[0], parts, engine)]

    async def _fit(self, ask: _Ask, voice: Voice) -> GenerationRequest:
        """The voice's request, its prompt fitted to its engine's context."""
        request_for = functools.partial(self._request, ask, voice.persona)
        return await self._fitter.fit(voice.engine, voice.prompt, request_for)

    async def _check_message(self, engine: Engine, ask: _Ask) -> None:
        """Refuse a message too long for the model before the turn changes anything."""
        persona = self._casting.persona(ask.persona_ids[0])
        alone = PromptParts(persona.prompt, ask.text)
        await self._fitter.check_message(engine, self._request(ask, persona, alone))

    def _request(self, ask: _Ask, persona: Persona, prompt: PromptParts) -> GenerationRequest:
        prefix = f"panel-{persona.id}" if ask.panel else "turn"
        return GenerationRequest(
            request_id=f"{prefix}-{uuid.uuid4().hex}",
            user_id=str(ask.where.user_id),
            conversation_id=str(ask.where.conversation_id),
            messages=prompt.messages(),
            sampling=SamplingParams(
                temperature=persona.temperature,
                top_p=persona.top_p,
                max_tokens=persona.max_tokens,
            ),
            priority=Priority.INTERACTIVE,
            public_prefix_messages=1,  # the persona prompt: operator text, no user data
        )

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise EngineUnavailable("no chat engine is configured")
        return self._engine


def _panel_reply(answer: _Answer) -> PanelReply:
    timings = {"engine_ttft_s": answer.engine_ttft_s}
    return PanelReply(answer.persona, answer.message.id, answer.usage, timings)
