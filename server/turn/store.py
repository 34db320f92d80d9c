"""What a turn writes: the user's message, each reply, and the memory work it queues.

The user's message is stored before generating (a client that goes away mid-reply
still has its message kept); a regenerated reply replaces the old one only once it is
complete; nothing from a turn routing marked not to remember is queued for memory.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from memory.conversation_log import ConversationLog
from memory.jobs import enqueue_extraction, enqueue_profile_update, enqueue_summary
from memory.messages import StoredMessage
from server.memory_jobs import MemoryJobs
from server.turn.gather import TurnParts


@dataclass(frozen=True, slots=True)
class Conversation:
    """Whose conversation a turn belongs to."""

    user_id: uuid.UUID
    conversation_id: uuid.UUID


class TurnStore:
    """Writes turns; one per process, shared by turns."""

    def __init__(self, log: ConversationLog, jobs: MemoryJobs | None = None) -> None:
        self._log = log
        self._jobs = jobs

    async def last_user_message(self, where: Conversation) -> StoredMessage | None:
        """The user's last message (None: none since the rolling summary)."""
        messages = (await self._log.history(where.conversation_id, where.user_id)).messages
        return next((m for m in reversed(messages) if m.role == "user"), None)

    async def store_user(
        self, where: Conversation, text: str, parts: TurnParts, edited: int | None = None
    ) -> StoredMessage:
        """The message, with how it was understood (the page shows it after a reload);
        ``edited``: the user message it replaces, with its replies."""
        emotion = parts.emotion
        understood = {"emotion": emotion.label, "emotion_confidence": round(emotion.confidence, 3)}
        cid, uid = where.conversation_id, where.user_id
        if edited is None:
            return await self._log.append(cid, uid, "user", text, understood)
        replaced = await self._log.replace_tail(cid, uid, edited, "user", text, understood)
        return replaced.message

    async def store_reply(
        self,
        where: Conversation,
        reply: str,
        metadata: dict[str, Any],
        replacing_after: StoredMessage | None = None,
    ) -> StoredMessage:
        """The reply, appended; with ``replacing_after`` (a regeneration) it replaces
        whatever answered that message before, if anything (`TailMoved` when a newer
        message came meanwhile: the newer exchange stays, and two regenerations never
        leave two replies)."""
        cid, uid = where.conversation_id, where.user_id
        if replacing_after is None:
            return await self._log.append(cid, uid, "assistant", reply, metadata)
        replaced = await self._log.replace_tail(
            cid, uid, replacing_after.id, "assistant", reply, metadata
        )
        return replaced.message

    async def queue_memory_work(self, where: Conversation, reply_id: int, parts: TurnParts) -> None:
        """Queue fact extraction, the profile update and the summary check (they never
        raise); nothing from a blocked turn is remembered."""
        if self._jobs is None or not parts.decision.store_in_memory:
            return
        # counted durably: the history holds only what follows the rolling summary
        turn = await self._log.user_turns(where.conversation_id)
        uid, cid = where.user_id, where.conversation_id
        queue, config = self._jobs.queue, self._jobs.config
        for enqueue in (enqueue_extraction, enqueue_profile_update):
            await enqueue(
                queue,
                config,
                user_id=uid,
                conversation_id=cid,
                last_message_id=reply_id,
                turn_number=turn,
            )
        await enqueue_summary(
            queue, config, user_id=uid, conversation_id=cid, last_message_id=reply_id
        )


def route_metadata(parts: TurnParts) -> dict[str, Any]:
    """What a stored reply keeps of its turn; the caller adds who answered (``persona``,
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
