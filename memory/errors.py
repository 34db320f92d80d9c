"""Errors raised by the memory tier. Callers catch `MemoryTierError`.

The tree, by the part of the tier that raises each:

    MemoryTierError
    ├── EmbeddedServiceError          memory.embedded
    ├── MigrationError                memory.migrate
    ├── DatabaseUnavailable           memory.db
    ├── AccountError                  memory.accounts
    ├── ErasureFailed                 memory.users
    ├── ConversationNotFoundError     memory.messages, memory.conversation_log
    ├── ConversationOwnerError        memory.messages, memory.session
    ├── TailMoved                     memory.messages
    ├── SessionConflictError          memory.session
    ├── SessionUnavailableError       memory.session
    ├── UnusableAnswer                memory.model_answers (summaries, extraction, profile)
    └── LongTermMemoryError           memory.longterm
        ├── InvalidMemory
        ├── MemoryNotFound
        ├── AlreadySuperseded
        └── EmbeddingFailed

`server/errors.py` maps the ones a request can meet to HTTP responses.
"""

from __future__ import annotations


class MemoryTierError(Exception):
    """Base of every error the memory package raises."""


class EmbeddedServiceError(MemoryTierError):
    """An embedded PostgreSQL or Redis could not be started or stopped."""


class MigrationError(MemoryTierError):
    """The schema could not be brought up to date (bad file, edited migration, SQL error)."""


class DatabaseUnavailable(MemoryTierError):
    """PostgreSQL cannot be reached (nothing listens, or the socket is gone)."""


class AccountError(MemoryTierError):
    """A user or key operation could not be done (unknown user or key)."""


class ErasureFailed(MemoryTierError):
    """Part of a user's data could not be erased; nothing was reported as erased."""


class ConversationNotFoundError(MemoryTierError):
    """The conversation does not exist (or was deleted)."""


class ConversationOwnerError(MemoryTierError):
    """The conversation belongs to another user; nothing of it is read or written."""


class TailMoved(MemoryTierError):
    """The message to replace from is no longer the conversation's last user message
    (another turn stored one after it); nothing was changed."""


class SessionConflictError(MemoryTierError):
    """An update lost the race for the session too many times in a row."""


class SessionUnavailableError(MemoryTierError):
    """Redis could not be reached, or returned a session that does not decode."""


class UnusableAnswer(MemoryTierError):
    """The chat model's answer to a background job cannot be used; the message says why.

    The jobs that ask the model (summary, fact extraction, profile update) catch
    it and report the job as ``unusable``: it never reaches a request.
    """


class LongTermMemoryError(MemoryTierError):
    """Base of the errors of the long-term memory store."""


class InvalidMemory(LongTermMemoryError):
    """A memory was rejected before it reached the database (kind, importance, content)."""


class MemoryNotFound(LongTermMemoryError):
    """No such memory for this user (or it belongs to someone else)."""


class AlreadySuperseded(LongTermMemoryError):
    """Only the current version of a fact can be superseded."""


class SourcesGone(LongTermMemoryError):
    """A memory drawn from messages was not stored: one of them is gone (the user
    edited, regenerated or deleted it while a job was still working on it)."""


class EmbeddingFailed(LongTermMemoryError):
    """The embedder raised or returned vectors of the wrong shape."""
