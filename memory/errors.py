"""Errors raised by the memory tier. Callers catch `MemoryTierError`."""

from __future__ import annotations


class MemoryTierError(Exception):
    """Base of every error the memory package raises."""


class EmbeddedServiceError(MemoryTierError):
    """An embedded PostgreSQL or Redis could not be started or stopped."""


class MigrationError(MemoryTierError):
    """The schema could not be brought up to date (bad file, edited migration, SQL error)."""


class DatabaseUnavailable(MemoryTierError):
    """PostgreSQL cannot be reached (nothing listens, or the socket is gone)."""
