from __future__ import annotations

from pathlib import Path

import pytest

from memory.errors import MigrationError
from memory.migrate import discover


def test_shipped_migrations_are_ordered_and_start_at_one() -> None:
    migrations = discover()
    versions = [m.version for m in migrations]
    assert versions == list(range(1, len(versions) + 1))
    assert "CREATE EXTENSION IF NOT EXISTS vector" in migrations[0].sql


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_first.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


def test_duplicate_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0001_b.sql").write_text("SELECT 2;")
    with pytest.raises(MigrationError, match="appears twice"):
        discover(tmp_path)
