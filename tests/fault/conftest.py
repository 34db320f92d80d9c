"""Fault and load tests: the integration fixtures (`chat_client`, `settings`...) and e2e helpers.

The integration conftest is loaded under another name and its fixtures
re-exported, so these tests get the same session PostgreSQL and Redis; the
e2e helpers (`support`) start `companion serve` subprocesses.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(_TESTS / "e2e"))  # `support`: helpers to run `companion serve`

_spec = importlib.util.spec_from_file_location(
    "integration_conftest", _TESTS / "integration" / "conftest.py"
)
assert _spec is not None and _spec.loader is not None
_integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_integration)

services_dir = _integration.services_dir
postgres_url = _integration.postgres_url
redis_url = _integration.redis_url
database_url = _integration.database_url
embedder = _integration.embedder
settings = _integration.settings
chat_client = _integration.chat_client
