"""Panels (several personas answer one message), the conversation's own persona and
complexity routing (small talk to the small model), over HTTP."""

from __future__ import annotations

import dataclasses
import shutil
from collections import Counter
from pathlib import Path

from helpers import signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sse_events import sse_events

from inference.config import ChatEngineConfig
from server.app import create_app
from server.settings import Settings

SSE = {"Accept": "text/event-stream"}


async def conversation_urls(
    client: AsyncTestClient[Litestar], headers: dict[str, str], persona: str = "companion"
) -> tuple[str, str]:
    created = await client.post("/api/v1/conversations", json={"persona": persona}, headers=headers)
    base = f"/api/v1/conversations/{created.json()['id']}"
    return f"{base}/messages", f"{base}/panel"


async def test_two_personas_answer_one_message(chat_client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(chat_client)
    messages, panel = await conversation_urls(chat_client, headers)
    body = {"content": "What should I cook tonight?", "personas": ["companion", "mentor"]}
    streamed = await chat_client.post(panel, json=body, headers={**headers, **SSE})
    assert streamed.status_code == 200, streamed.text
    events = sse_events(streamed.text)
    names = Counter(name for name, _ in events)
    assert events[0][0] == "meta" and events[-1][0] == "done"
    assert names["reply"] == 2 and names["meta"] == names["done"] == 1
    assert events[0][1]["personas"] == ["companion", "mentor"]
    token_personas = {data["persona"] for name, data in events if name == "token"}
    assert token_personas == {"companion", "mentor"}
    replies = {data["persona"]: data for name, data in events if name == "reply"}
    texts = {
        persona: "".join(
            str(d["text"]) for n, d in events if n == "token" and d["persona"] == persona
        )
        for persona in replies
    }
    # the conversation is computed once: the later persona reuses it
    cached = sorted(int(r["usage"]["cached_prompt_tokens"]) for r in replies.values())  # type: ignore[index]
    assert cached[-1] > 0

    history = (await chat_client.get(messages, headers=headers)).json()
    assert [m["role"] for m in history] == ["user", "assistant", "assistant"]
    stored = {m["metadata"]["persona"]: m for m in history[1:]}
    assert stored.keys() == {"companion", "mentor"}
    for persona, message in stored.items():
        assert message["id"] == replies[persona]["assistant_message_id"]
        assert message["content"] == texts[persona]
        assert message["metadata"]["panel"] is True


async def test_panel_as_json(chat_client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(chat_client)
    _, panel = await conversation_urls(chat_client, headers)
    body = {"content": "Any advice for a rainy day?", "personas": ["playful", "listener"]}
    answered = await chat_client.post(panel, json=body, headers=headers)
    assert answered.status_code == 200, answered.text
    result = answered.json()
    assert sorted(a["persona"] for a in result["answers"]) == ["listener", "playful"]
    assert len(result["done"]["replies"]) == 2


async def test_bad_panels_are_refused_and_store_nothing(
    chat_client: AsyncTestClient[Litestar],
) -> None:
    headers = await signed_in(chat_client)
    messages, panel = await conversation_urls(chat_client, headers)
    for personas in (
        [],
        ["companion", "nobody"],
        ["companion", "crisis-support"],  # route-only personas cannot be chosen
        ["companion", "companion"],
        ["companion", "mentor", "playful", "listener", "companion"],
    ):
        refused = await chat_client.post(
            panel, json={"content": "Hello", "personas": personas}, headers=headers
        )
        assert refused.status_code == 400, personas
    assert (await chat_client.get(messages, headers=headers)).json() == []


async def test_safety_routing_overrides_the_panel(chat_client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(chat_client)
    _, panel = await conversation_urls(chat_client, headers)
    body = {"content": "I want to kill myself tonight.", "personas": ["playful", "mentor"]}
    result = (await chat_client.post(panel, json=body, headers=headers)).json()
    assert result["meta"]["route"] == "crisis"
    assert result["meta"]["personas"] == ["crisis-support"]
    assert [a["persona"] for a in result["answers"]] == ["crisis-support"]


async def test_the_conversations_persona_answers(chat_client: AsyncTestClient[Litestar]) -> None:
    headers = await signed_in(chat_client)
    messages, _ = await conversation_urls(chat_client, headers, persona="mentor")
    turn = await chat_client.post(messages, json={"content": "Good morning!"}, headers=headers)
    assert turn.json()["meta"]["persona"] == "mentor"


async def test_small_talk_goes_to_the_small_model(
    settings: Settings, tiny_gguf: Path, tmp_path: Path
) -> None:
    small = tmp_path / "tiny-small.gguf"
    shutil.copy(tiny_gguf, small)
    engine = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)
    full = dataclasses.replace(
        settings, chat_engine=engine, embedder="minilm", chat_small_model=small
    )
    async with AsyncTestClient(create_app(full), timeout=120) as client:
        headers = await signed_in(client)
        messages, _ = await conversation_urls(client, headers)
        hello = (await client.post(messages, json={"content": "hi!"}, headers=headers)).json()
        assert (hello["meta"]["tier"], hello["meta"]["model"]) == ("small", "tiny-small")
        question = "Can you help me think through whether to take the new job offer?"
        answer = (await client.post(messages, json={"content": question}, headers=headers)).json()
        assert (answer["meta"]["tier"], answer["meta"]["model"]) == ("default", "tiny")
