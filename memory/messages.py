"""Durable conversation messages in PostgreSQL: the source of truth for every turn.

Every message is written here first; the Redis buffer (`memory.buffer`) is only
a cache of the newest ones and is rebuilt from this table whenever Redis has
lost it or it is behind.

Messages are appended, and only one change is ever made to what is stored:
the user may replace the conversation's last exchange (`MessageStore.replace_tail`:
a new reply to their last message, or that message edited). The replaced
messages are deleted and the new one gets a new id, so every cache keyed on
"the newest id" (the buffer) sees the change; the long-term memories drawn from
the deleted messages go with them in the same transaction, since they quote
text that no longer exists (the new exchange is extracted again), and so does
what the profile drew from them (`memory.profile.forget_drawn_from`: trait
observations, with the traits they moved rebuilt; goal notes; goals they alone
named).

Appends to one conversation are serialised by a row lock on the conversation
(the same statement bumps ``conversations.updated_at``, which orders the
conversation list). With the lock held, the insert can report the id of the
message just before it exactly, and the buffer uses that to refuse a push that
would leave a gap (a message whose own push failed or is still in flight).

``metadata`` is free-form JSON (it is ``jsonb`` in the schema); it is encoded
here with msgspec and sent as text, so the module needs no pool-wide codec.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from memory.errors import ConversationNotFoundError, ConversationOwnerError, TailMoved
from memory.profile import forget_drawn_from

Role = Literal["system", "user", "assistant"]


class Conversation(msgspec.Struct, frozen=True):
    """One conversation of one user."""

    id: uuid.UUID
    user_id: uuid.UUID
    persona: str
    title: str | None
    created_at: datetime
    updated_at: datetime


class StoredMessage(msgspec.Struct, frozen=True):
    """A message as stored; ``id`` orders the messages of a conversation."""

    id: int
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    content: str
    created_at: datetime
    token_count: int | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class AppendedMessage(msgspec.Struct, frozen=True):
    """A new message and the id of the one before it in its conversation (None: first)."""

    message: StoredMessage
    previous_id: int | None


class ReplacedTail(msgspec.Struct, frozen=True):
    """The message that replaced a conversation's last exchange, the id before it, and the
    ids of the messages it replaced."""

    message: StoredMessage
    previous_id: int | None
    removed_ids: list[int]


class ConversationHead(msgspec.Struct, frozen=True):
    """Who owns a conversation, its newest message id (None: no messages yet) and the
    last message its durable rolling summary covers (0: no summary)."""

    user_id: uuid.UUID
    last_message_id: int | None
    summary_through_id: int = 0


MESSAGE_COLUMNS = (
    "id, conversation_id, user_id, role, content, created_at, token_count, metadata::text"
)

# Also names an untitled conversation after its first user message ($3; NULL for others).
_LOCK_CONVERSATION = """
UPDATE conversations SET updated_at = now(), title = COALESCE(title, $3)
WHERE id = $1 AND user_id = $2
RETURNING id
"""

TITLE_CHARS = 60

# An edit of the first user message renames a conversation still named after it ($3,
# the automatic title of the old text, to $4); a title the user chose stays.
_RETITLE = """
UPDATE conversations SET title = $4
WHERE id = $1 AND title = $3
  AND NOT EXISTS (
      SELECT 1 FROM messages WHERE conversation_id = $1 AND role = 'user' AND id < $2
  )
"""
_CONTENT = "SELECT content FROM messages WHERE id = $1"


def title_from(message: str) -> str:
    """A conversation's automatic title: the first line of its first message, whitespace
    collapsed, cut at a word boundary near `TITLE_CHARS` with an ellipsis."""
    line = " ".join(message.strip().split("\n", 1)[0].split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0] if " " in line[:TITLE_CHARS] else ""
    return (cut or line[:TITLE_CHARS]).rstrip(" ,.;:-") + "…"


# A statement of its own, after the lock: under READ COMMITTED it takes a new
# snapshot, so it sees the message committed by the previous lock holder. The
# sub-select sees that snapshot, not the row this statement inserts.
_INSERT = f"""
INSERT INTO messages (conversation_id, user_id, role, content, token_count, metadata)
VALUES ($1, $2, $3, $4, $5, $6::jsonb)
RETURNING {MESSAGE_COLUMNS},
    (SELECT max(m.id) FROM messages m WHERE m.conversation_id = $1) AS previous_id
"""

_LAST_USER_MESSAGE = "SELECT max(id) FROM messages WHERE conversation_id = $1 AND role = 'user'"
_REMOVE_FROM = "DELETE FROM messages WHERE conversation_id = $1 AND id >= $2 RETURNING id"
# Provenance is exact (`memory.episodes`): a memory that quotes a removed message, even in
# part, is a copy of text the user replaced. An older fact it superseded is current again.
_FORGET_DRAWN_FROM = (
    "DELETE FROM memories WHERE user_id = $1 AND source_message_ids && $2::bigint[]"
)

_PAGE = f"""
SELECT {MESSAGE_COLUMNS} FROM (
    SELECT * FROM messages
    WHERE conversation_id = $1 AND ($2::bigint IS NULL OR id < $2)
    ORDER BY id DESC
    LIMIT $3
) newest
ORDER BY id
"""

_USER_TURNS = "SELECT count(*) FROM messages WHERE conversation_id = $1 AND role = 'user'"

_HEAD = """
SELECT c.user_id,
    (SELECT max(m.id) FROM messages m WHERE m.conversation_id = c.id) AS last_message_id,
    (SELECT s.through_message_id FROM conversation_summaries s
     WHERE s.conversation_id = c.id AND s.summary IS NOT NULL) AS summary_through_id
FROM conversations c
WHERE c.id = $1
"""


class ConversationStore:
    """Conversations rows: create, look up, list a user's."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, user_id: uuid.UUID, persona: str = "default", title: str | None = None
    ) -> Conversation:
        """A new conversation for ``user_id``."""
        row = await self._pool.fetchrow(
            "INSERT INTO conversations (user_id, persona, title) VALUES ($1, $2, $3)"
            " RETURNING id, user_id, persona, title, created_at, updated_at",
            user_id,
            persona,
            title,
        )
        return Conversation(**dict(row))

    async def list_for(self, user_id: uuid.UUID, limit: int = 100) -> list[Conversation]:
        """The user's conversations, most recently active first."""
        rows = await self._pool.fetch(
            "SELECT id, user_id, persona, title, created_at, updated_at FROM conversations"
            " WHERE user_id = $1 ORDER BY updated_at DESC LIMIT $2",
            user_id,
            limit,
        )
        return [Conversation(**dict(row)) for row in rows]

    async def get(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> Conversation:
        """The conversation, if it exists and belongs to ``user_id``."""
        row = await self._pool.fetchrow(
            "SELECT id, user_id, persona, title, created_at, updated_at"
            " FROM conversations WHERE id = $1",
            conversation_id,
        )
        if row is None:
            raise ConversationNotFoundError(f"conversation {conversation_id} does not exist")
        conversation = Conversation(**dict(row))
        check_owner(conversation_id, conversation.user_id, user_id)
        return conversation

    async def rename(
        self, conversation_id: uuid.UUID, user_id: uuid.UUID, title: str
    ) -> Conversation:
        """Set the conversation's title; the same errors as `get`, and nothing changes then."""
        row = await self._pool.fetchrow(
            "UPDATE conversations SET title = $3 WHERE id = $1 AND user_id = $2"
            " RETURNING id, user_id, persona, title, created_at, updated_at",
            conversation_id,
            user_id,
            title,
        )
        if row is None:
            return await self.get(conversation_id, user_id)  # raises: missing or another's
        return Conversation(**dict(row))

    async def delete(self, conversation_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Delete the conversation with its messages and summary. Memories drawn from it
        stay (unlinked): they are the user's, listed and forgotten one by one."""
        deleted = await self._pool.fetchval(
            "DELETE FROM conversations WHERE id = $1 AND user_id = $2 RETURNING id",
            conversation_id,
            user_id,
        )
        if deleted is None:
            await self.get(conversation_id, user_id)  # raises: missing or another user's


class MessageStore:
    """The message log over the asyncpg pool: appends, and the last exchange replaced."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @property
    def pool(self) -> asyncpg.Pool:
        return self._pool

    async def append(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        role: Role,
        content: str,
        metadata: dict[str, Any] | None = None,
        token_count: int | None = None,
    ) -> StoredMessage:
        """Store one message durably; return it with its id and creation time."""
        appended = await self.append_linked(
            conversation_id, user_id, role, content, metadata, token_count
        )
        return appended.message

    async def append_linked(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        role: Role,
        content: str,
        metadata: dict[str, Any] | None = None,
        token_count: int | None = None,
    ) -> AppendedMessage:
        """Like `append`, also returning the id of the message before it (for the buffer).

        Raises `ConversationNotFoundError` or `ConversationOwnerError` when the
        conversation is missing or not ``user_id``'s; nothing is written then.
        """
        encoded = msgspec.json.encode(metadata or {}).decode()
        async with self._pool.acquire() as conn, conn.transaction():
            title = title_from(content) if role == "user" and content.strip() else None
            if await conn.fetchval(_LOCK_CONVERSATION, conversation_id, user_id, title) is None:
                await self._raise_missing_or_foreign(conn, conversation_id, user_id)
            row = await conn.fetchrow(
                _INSERT, conversation_id, user_id, role, content, token_count, encoded
            )
        return AppendedMessage(message_from_row(row), row["previous_id"])

    async def replace_tail(
        self,
        conversation_id: uuid.UUID,
        user_id: uuid.UUID,
        user_message_id: int,
        role: Role,
        content: str,
        metadata: dict[str, Any] | None = None,
    ) -> ReplacedTail:
        """Replace the exchange that starts at the user's last message ``user_message_id``:
        with role ``assistant``, what follows it (its reply, or a panel's replies) gives
        way to a new reply; with role ``user``, the message itself and its replies give
        way to the edited message.

        Raises `TailMoved` when ``user_message_id`` is not the last user message (a
        newer turn was stored), and the errors of `append_linked`; nothing changes then.
        """
        first_removed = user_message_id if role == "user" else user_message_id + 1
        encoded = msgspec.json.encode(metadata or {}).decode()
        async with self._pool.acquire() as conn, conn.transaction():
            if await conn.fetchval(_LOCK_CONVERSATION, conversation_id, user_id, None) is None:
                await self._raise_missing_or_foreign(conn, conversation_id, user_id)
            if await conn.fetchval(_LAST_USER_MESSAGE, conversation_id) != user_message_id:
                raise TailMoved(
                    f"message {user_message_id} is not the conversation's last user message"
                )
            if role == "user":
                old = await conn.fetchval(_CONTENT, user_message_id)
                await conn.execute(
                    _RETITLE, conversation_id, user_message_id, title_from(old), title_from(content)
                )
            removed = [
                row["id"] for row in await conn.fetch(_REMOVE_FROM, conversation_id, first_removed)
            ]
            row = await conn.fetchrow(
                _INSERT, conversation_id, user_id, role, content, None, encoded
            )
            if removed:
                await conn.execute(_FORGET_DRAWN_FROM, user_id, removed)
                await forget_drawn_from(conn, user_id, removed)
        return ReplacedTail(message_from_row(row), row["previous_id"], removed)

    async def recent(self, conversation_id: uuid.UUID, limit: int) -> list[StoredMessage]:
        """The newest ``limit`` messages, oldest first."""
        return await self.page(conversation_id, None, limit)

    async def page(
        self, conversation_id: uuid.UUID, before_id: int | None, limit: int
    ) -> list[StoredMessage]:
        """Up to ``limit`` messages older than ``before_id`` (None: the newest), oldest first.

        Page backwards by passing the first id of one page as ``before_id`` of
        the next; an empty page means the beginning was reached.
        """
        rows = await self._pool.fetch(_PAGE, conversation_id, before_id, limit)
        return [message_from_row(row) for row in rows]

    async def user_turns(self, conversation_id: uuid.UUID) -> int:
        """How many messages the user has sent in the conversation (its turn count)."""
        count: int = await self._pool.fetchval(_USER_TURNS, conversation_id)
        return count

    async def head(self, conversation_id: uuid.UUID) -> ConversationHead:
        """Owner and newest message id, in one indexed lookup (checks buffer freshness)."""
        row = await self._pool.fetchrow(_HEAD, conversation_id)
        if row is None:
            raise ConversationNotFoundError(f"conversation {conversation_id} does not exist")
        return ConversationHead(
            row["user_id"], row["last_message_id"], row["summary_through_id"] or 0
        )

    @staticmethod
    async def _raise_missing_or_foreign(
        conn: asyncpg.Connection, conversation_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        owner = await conn.fetchval(
            "SELECT user_id FROM conversations WHERE id = $1", conversation_id
        )
        if owner is None:
            raise ConversationNotFoundError(f"conversation {conversation_id} does not exist")
        check_owner(conversation_id, owner, user_id)


def check_owner(conversation_id: uuid.UUID, owner: uuid.UUID, user_id: uuid.UUID) -> None:
    """Raise `ConversationOwnerError` unless ``user_id`` is the conversation's ``owner``."""
    if owner != user_id:
        # The message names no user: it may reach a log the other user can read.
        raise ConversationOwnerError(f"conversation {conversation_id} belongs to another user")


def message_from_row(row: asyncpg.Record) -> StoredMessage:
    return StoredMessage(
        id=row["id"],
        conversation_id=row["conversation_id"],
        user_id=row["user_id"],
        role=row["role"],
        content=row["content"],
        created_at=row["created_at"],
        token_count=row["token_count"],
        metadata=msgspec.json.decode(row["metadata"]),
    )
