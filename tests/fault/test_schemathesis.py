"""Property-based requests from the app's own OpenAPI schema: no answer is a 5xx.

Schemathesis generates requests for every operation of ``/schema/openapi.json``
(a bounded number of examples each) against a running `companion serve` on
the tiny model, signed in as a registered user; only the server-error check
runs (4xx answers to nonsense are the point). Erasing the account is left out:
it would sign the user out for every operation after it.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from support import companion_env, serving

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40  # per operation: keeps the run near a minute on two cores


@pytest.fixture(scope="module")
def served(tiny_gguf: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A server and the headers of a signed-in user."""
    with tempfile.TemporaryDirectory(prefix="cmps-", dir="/tmp") as directory:
        root = Path(directory)
        env = companion_env(
            root,
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX="2048",
            COMPANION_CHAT_SLOTS="4",
            COMPANION_RATE_LIMITS="false",
        )
        with serving(env, root / "serve.log") as (base, _):
            credentials = {"username": f"s{uuid.uuid4().hex[:8]}", "password": "long secret 123"}
            assert httpx.post(f"{base}/api/v1/auth/register", json=credentials).is_success
            login = httpx.post(f"{base}/api/v1/auth/login", json=credentials).json()
            yield base, {"Authorization": f"Bearer {login['access_token']}"}


def test_no_server_errors(served: tuple[str, dict[str, str]]) -> None:
    base, auth = served
    schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
    failures: list[str] = []
    operations = 0
    statuses: dict[int, int] = {}
    for result in schema.exclude(method="DELETE", path="/api/v1/me").get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same examples every run
        )
        def run(case: Any) -> None:
            response = case.call(base_url=base, headers=auth, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis raises groups
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations > 10, statuses
    assert not failures, "\n\n".join(failures)
    assert statuses.get(200, 0) > 0, statuses  # signed in: not everything was a 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/api/v1/me/goals/{big}"),
        ("PATCH", "/api/v1/me/goals/{big}"),
        ("DELETE", "/api/v1/memories/{big}"),
        ("GET", "/api/v1/conversations/{conversation}/messages?before={big}"),
    ],
)
def test_ids_past_bigint_are_client_errors(
    served: tuple[str, dict[str, str]], method: str, path: str
) -> None:
    """Found by schemathesis: an id past PostgreSQL's bigint was a 500."""
    base, auth = served
    conversation = httpx.post(f"{base}/api/v1/conversations", json={}, headers=auth).json()["id"]
    url = base + path.format(big=2**80, conversation=conversation)
    response = httpx.request(method, url, json={"status": "achieved"}, headers=auth)
    assert response.status_code in (400, 404), response.text
