"""Everything a turn gathers before it generates: the understanding of the message,
the conversation so far, long-term memories, and the route.

Emotion and retrieval need only the message: they start at once, while the session
and history load; content classification needs the session as context and then
finds the message's embedding already made. Routing updates the session atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass

import msgspec

from inference.classifiers.content import ContentClassifier, ContentContext, ContentResult
from inference.classifiers.emotion import EmotionClassifier, EmotionResult
from inference.types import ChatMessage
from memory.accounts import AccountStore
from memory.conversation_log import ConversationHistory, ConversationLog
from memory.longterm import LongTermMemory, RetrievedMemory
from memory.messages import StoredMessage
from memory.profile import ProfileStore
from memory.session import SessionState, SessionStore
from server.routing import RouteDecision, decide_route
from server.turn.stats import TurnClock

MEMORY_TOKEN_BUDGET = 600


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


@dataclass(frozen=True, slots=True)
class _Loaded:
    history: ConversationHistory
    session: SessionState
    minor: bool
    profile: str | None


class Gatherer:
    """Gathers a turn's parts; one per process, shared by turns."""

    def __init__(
        self,
        log: ConversationLog,
        sessions: SessionStore,
        memories: LongTermMemory,
        emotions: EmotionClassifier,
        content: ContentClassifier,
        accounts: AccountStore,
        profiles: ProfileStore | None = None,
    ) -> None:
        self._log = log
        self._sessions = sessions
        self._memories = memories
        self._emotions = emotions
        self._content = content
        self._accounts = accounts
        self._profiles = profiles

    async def gather(
        self,
        user_id: uuid.UUID,
        conversation_id: uuid.UUID,
        text: str,
        clock: TurnClock,
        history_before: int | None = None,
    ) -> TurnParts:
        """The turn's parts; ``history_before``: the message a regeneration or edit
        answers anew (the history ends before it, and memories drawn from it are left out)."""
        early = asyncio.gather(
            clock.timed("emotion", self._emotions.classify(text)),
            clock.timed(
                "retrieve",
                self._memories.retrieve(user_id, text, k=5, token_budget=MEMORY_TOKEN_BUDGET),
            ),
        )
        try:
            loaded = await clock.timed("load", self._load(user_id, conversation_id))
            context = _content_context(loaded.session, loaded.minor, user_id)
            content = await clock.timed("classify", self._content.classify(text, context))
            emotion, memories = await early
        except BaseException:
            early.cancel()
            with contextlib.suppress(BaseException):
                await early
            raise
        minor = loaded.minor
        if content.declares_minor and not minor:  # "I'm 15": the same as a date of birth
            await self._accounts.mark_minor(user_id)
            minor = True
        again = history_before is not None  # the last message, answered anew
        routed = self._route(conversation_id, user_id, content, minor, again)
        decision = await clock.timed("route", routed)
        messages = loaded.history.messages
        return TurnParts(
            session=loaded.session,
            history=[
                ChatMessage(m.role, m.content)
                for m in messages
                # a regenerated or edited message comes last, as the message
                if history_before is None or m.id < history_before
            ],
            summary=loaded.history.summary.text if loaded.history.summary else None,
            emotion=emotion,
            content=content,
            memories=_not_drawn_from(memories, messages, history_before),
            decision=decision,
            profile=loaded.profile,
        )

    async def _load(self, user_id: uuid.UUID, conversation_id: uuid.UUID) -> _Loaded:
        history, session, minor, profile = await asyncio.gather(
            self._log.history(conversation_id, user_id),
            self._sessions.get_or_create(conversation_id, user_id),
            self._accounts.is_minor(user_id),
            self._profile_hint(user_id),
        )
        return _Loaded(history, session, minor, profile)

    async def _profile_hint(self, user_id: uuid.UUID) -> str | None:
        return await self._profiles.hint(user_id) if self._profiles is not None else None

    async def _route(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        content: ContentResult,
        minor: bool,
        again: bool,
    ) -> RouteDecision:
        """Route the message and write the session's new counters. ``again`` (a
        regeneration or an edit of the last message): from the counters as they were
        before that message, so that answering it anew counts it once."""
        decided: list[RouteDecision] = []

        def route(state: SessionState) -> SessionState:
            before = state.before_last if again and state.before_last else state.route_counters()
            decided.clear()  # the update may be retried: keep the last decision
            decided.append(decide_route(state.with_counters(before), content, minor=minor))
            changed = state.with_counters(decided[0].changes)
            return msgspec.structs.replace(changed, before_last=before)

        await self._sessions.update(conversation_id, user_id, route)
        return decided[0]


def _content_context(session: SessionState, minor: bool, user_id: uuid.UUID) -> ContentContext:
    return ContentContext(
        recent_labels=(session.last_content_label,) if session.last_content_label else (),
        route=session.route,
        route_lock_remaining=session.route_lock_remaining,
        minor=minor,
        user_id=str(user_id),
    )


def _not_drawn_from(
    memories: list[RetrievedMemory], messages: list[StoredMessage], replaced_from: int | None
) -> list[RetrievedMemory]:
    """The memories, less those quoting the exchange a regeneration or edit replaces (an
    episode already extracted from it would put the old reply back into the prompt)."""
    replaced = {m.id for m in messages if replaced_from is not None and m.id >= replaced_from}
    return [m for m in memories if replaced.isdisjoint(m.source_message_ids)]
