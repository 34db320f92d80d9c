"""The companion API end to end on a running server: a whole user's life, and disconnects."""

from __future__ import annotations

import json
import time
import uuid

import httpx
from sse_events import iter_sse_events, sse_events
from support import RunningServer

WAIT_S = 90  # guards for background work (memory extraction), not timing assertions


def metric(base_url: str, name: str, **labels: str) -> float:
    """The sum of a series from /metrics over the samples whose labels match."""
    total = 0.0
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_register_converse_remember_export_and_erase(server: RunningServer) -> None:
    api = httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=120)
    credentials = {"username": f"flow{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    assert api.post("/auth/register", json=credentials).status_code == 201
    login = api.post("/auth/login", json=credentials).json()
    assert login["token_type"].lower() == "bearer" and login["expires_in"] > 0
    auth = {"Authorization": f"Bearer {login['access_token']}"}

    conversation = api.post("/conversations", json={"title": "Hello"}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    said = "My sister Ana lives in Lisbon and she loves hiking."
    streamed = api.post(
        url, json={"content": said}, headers={**auth, "Accept": "text/event-stream"}
    )
    events = sse_events(streamed.text)
    assert events[0][0] == "meta" and events[-1][0] == "done"
    reply = "".join(str(data["text"]) for name, data in events if name == "token")
    history = api.get(url, headers=auth).json()
    assert [(m["role"], m["content"]) for m in history] == [("user", said), ("assistant", reply)]

    deadline = time.monotonic() + WAIT_S  # the background job stores the turn as memory
    memories: list[dict[str, object]] = []
    while time.monotonic() < deadline and not memories:
        memories = api.get("/memories", params={"query": "Ana"}, headers=auth).json()
        time.sleep(0.5)
    assert memories, "no memory appeared after the background job"

    exported = api.get("/me/export", headers=auth).json()
    assert json.dumps(exported).count("Lisbon") >= 2  # the message and its memory

    assert api.delete("/me", headers=auth).status_code in (200, 204)
    assert api.get("/me", headers=auth).status_code == 401
    assert api.post("/auth/login", json=credentials).status_code == 401


def test_a_disconnect_aborts_generation_and_keeps_the_message(server: RunningServer) -> None:
    api = httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=120)
    credentials = {"username": f"cut{uuid.uuid4().hex[:8]}", "password": "a long enough secret"}
    api.post("/auth/register", json=credentials)
    token = api.post("/auth/login", json=credentials).json()["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    conversation = api.post("/conversations", json={}, headers=auth).json()
    url = f"/conversations/{conversation['id']}/messages"
    aborted = metric(server.base_url, "companion:request_success_total", finished_reason="abort")

    headers = {**auth, "Accept": "text/event-stream", "Idempotency-Key": "once"}
    with api.stream("POST", url, json={"content": "Tell me a story."}, headers=headers) as stream:
        for name, _ in iter_sse_events(stream.iter_lines()):
            if name == "token":
                break  # the client goes away mid-reply

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        now = metric(server.base_url, "companion:request_success_total", finished_reason="abort")
        if now > aborted:
            break
        time.sleep(0.2)
    assert now > aborted, "the engine did not abort the abandoned generation"
    assert [m["role"] for m in api.get(url, headers=auth).json()] == ["user"]

    retried = api.post(url, json={"content": "Tell me a story."}, headers=headers)
    assert retried.status_code == 200 and "idempotent-replayed" not in retried.headers
    assert sse_events(retried.text)[-1][0] == "done"
