"""Per-address rate limits behind a reverse proxy (the hardening review's finding 4).

`companion serve` takes the client address from ``X-Forwarded-For`` only when
the peer is a trusted proxy (``COMPANION_TRUSTED_PROXIES``); otherwise the
header is ignored, so nobody can pick a fresh address per request.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from support import companion_env, serving

WRONG = {"username": "nobody_here", "password": "not the password"}


def login_statuses(base: str, addresses: list[str]) -> list[int]:
    return [
        httpx.post(
            f"{base}/api/v1/auth/login", json=WRONG, headers={"X-Forwarded-For": address}
        ).status_code
        for address in addresses
    ]


def serve_env(root: Path, **extra: str) -> dict[str, str]:
    return companion_env(
        root,
        COMPANION_CHAT_ENGINE="none",
        COMPANION_EMBEDDER="none",
        COMPANION_RATE_LIMIT_ROUTES="auth=2/minute",
        **extra,
    )


def test_a_trusted_proxy_names_the_client_and_others_do_not() -> None:
    with tempfile.TemporaryDirectory(prefix="cmpx-", dir="/tmp") as directory:
        root = Path(directory)
        trusted = serve_env(root / "trusted", COMPANION_TRUSTED_PROXIES="127.0.0.1")
        with serving(trusted, root / "trusted.log") as (base, _):
            # two clients behind the proxy: each has its own two logins a minute
            statuses = login_statuses(base, ["10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2"])
            assert statuses == [401, 401, 429, 401]
        # no trusted proxy (the default): the header is ignored, the peer is the client
        with serving(serve_env(root / "direct"), root / "direct.log") as (base, _):
            statuses = login_statuses(base, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
            assert statuses == [401, 401, 429]
