"""Versioned SQL migrations, applied in one transaction under a PostgreSQL advisory lock.

Files are ``memory/migrations/NNNN_name.sql``; each is applied once, in order,
and recorded in ``schema_migrations`` with its checksum. A migration that was
edited after it was applied is an error, not a silent drift.

Why our own applier and not a migration tool: several instances may start at
once, so application must be serialised; PostgreSQL gives us exactly that
with ``pg_advisory_xact_lock`` and transactional DDL, over the asyncpg
connection the service already has. The tools that do this for us (alembic,
yoyo) bring SQLAlchemy or a second, synchronous driver and their own
configuration for what is here some forty lines. Plain SQL files also stay
readable by an operator who has to apply them by hand.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from memory.errors import MigrationError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# Any constant works; every instance must use the same one. ("comp" in ASCII.)
_LOCK_KEY = 0x636F6D70

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file in ``directory``, ordered by version."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.fullmatch(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.sql")
        version = int(match[1])
        if version in found:
            raise MigrationError(f"{path.name}: version {version} appears twice")
        found[version] = Migration(version, match[2], path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def apply_migrations(
    conn: asyncpg.Connection, migrations: list[Migration] | None = None
) -> list[Migration]:
    """Apply what is pending, all or nothing; return what this call applied.

    Safe to call from any number of processes at once: the advisory lock makes
    them take turns, and each sees what the previous one recorded.
    """
    migrations = discover() if migrations is None else migrations
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_CREATE_TABLE)
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {row["version"]: row["checksum"] for row in rows}
        _check_applied(migrations, applied)
        pending = [m for m in migrations if m.version not in applied]
        for migration in pending:
            await _apply_one(conn, migration)
    return pending


async def migrate_url(url: str, migrations: list[Migration] | None = None) -> list[Migration]:
    """Connect to ``url``, apply pending migrations, disconnect."""
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn, migrations)
    finally:
        await conn.close()


def _check_applied(migrations: list[Migration], applied: dict[int, str]) -> None:
    for migration in migrations:
        recorded = applied.get(migration.version)
        if recorded is not None and recorded != migration.checksum:
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} was changed after it was "
                "applied; add a new migration instead of editing an applied one"
            )
    newer = sorted(set(applied) - {m.version for m in migrations})
    if newer:
        log.warning("database has migrations this code does not know", extra={"versions": newer})


async def _apply_one(conn: asyncpg.Connection, migration: Migration) -> None:
    try:
        await conn.execute(migration.sql)
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            f"migration {migration.version:04d}_{migration.name} failed: {exc}"
        ) from exc
    await conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
        migration.version,
        migration.name,
        migration.checksum,
    )
    log.info("migration applied", extra={"version": migration.version, "migration": migration.name})
