"""A turn's prompt fitted to the model's context, in the model's own tokens (issue 16,
finding 3): one long message neither breaks the conversation nor is stored when refused."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient

from inference.config import ChatEngineConfig
from inference.engines.llamacpp.engine import LlamaCppConfig, LlamaCppEngine
from inference.engines.process.client import ProcessEngine
from inference.errors import ContextLengthExceeded
from inference.types import ChatMessage, GenerationRequest, SamplingParams
from server.turn.fit import PromptFitter, upper_bound
from server.turn.prompt import PromptParts

TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog, twice. " * 20,
    "cjk": "漢字かな交じり文、한국어 문장도。" * 40,
    "emoji": "🙂🚀👩‍👩‍👧‍👦 " * 60,
    "code": "def f(x):\n\treturn {'k': [x ** 2 for _ in range(3)]}  # ✓\n" * 15,
    "bytes": "\u0300\u200d\ufeff\U0010ffff" * 50,
}


@pytest.fixture
async def engine(tiny_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        LlamaCppConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=1024, n_slots=2)
    )
    await engine.start()
    yield engine
    await engine.close()


def _request(parts: PromptParts, max_tokens: int = 64) -> GenerationRequest:
    return GenerationRequest(
        request_id=uuid.uuid4().hex,
        user_id="u",
        messages=parts.messages(),
        sampling=SamplingParams(max_tokens=max_tokens),
    )


@pytest.mark.parametrize("kind", sorted(TEXTS))
async def test_the_shortcut_bound_is_never_below_the_real_count(
    engine: LlamaCppEngine, kind: str
) -> None:
    """The fitter skips measuring while `upper_bound` fits: it must hold for every script."""
    parts = PromptParts("You are kind.", TEXTS[kind], summary="x", history=_history(4, kind))
    request = _request(parts)
    size = await engine.measure(request)
    assert size is not None and size.context_tokens == 1024
    assert upper_bound(request.messages) >= size.prompt_tokens


async def test_the_oldest_history_goes_first_and_no_more_than_needed(
    engine: LlamaCppEngine,
) -> None:
    history = _history(12, "english")
    parts = PromptParts("You are kind.", "And now?", summary="They met.", history=history)
    fitter = PromptFitter()
    request = await fitter.fit(engine, parts, _request)
    kept = [m for m in request.messages if m in history]
    assert 0 < len(kept) < len(history)
    assert kept == history[-len(kept) :]  # the newest are kept, in order
    size = await engine.measure(request)
    assert size is not None and size.fits(64)
    one_more = dataclasses.replace(parts, history=history[-len(kept) - 1 :])
    bigger = await engine.measure(_request(one_more))
    assert bigger is not None and not bigger.fits(64)  # it kept all it could
    # the persona, the summary and the message survive
    assert request.messages[0].content == "You are kind."
    assert request.messages[1].content.endswith("They met.")
    assert request.messages[-1] == ChatMessage("user", "And now?")


async def test_a_message_too_long_alone_is_refused(engine: LlamaCppEngine) -> None:
    fitter = PromptFitter()
    await fitter.check_message(engine, _request(PromptParts("You are kind.", "hi")))
    # a reply that takes most of the context leaves a short message room, no more
    await fitter.check_message(engine, _request(PromptParts("You are kind.", "hi"), 960))
    long = _request(PromptParts("You are kind.", "漢" * 400))
    with pytest.raises(ContextLengthExceeded, match="too long"):
        await fitter.check_message(engine, long)


async def test_the_engine_process_measures_as_the_engine_does(
    engine: LlamaCppEngine, tiny_gguf: Path
) -> None:
    config = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=1024, n_slots=2)
    remote = ProcessEngine(config)
    await remote.start()
    try:
        request = _request(PromptParts("You are kind.", TEXTS["cjk"]))
        assert await remote.measure(request) == await engine.measure(request)
        assert remote.stats().waiting == 0  # a measure is not a request
    finally:
        await remote.close()


async def test_one_long_message_never_breaks_a_conversation(
    chat_client: AsyncTestClient[Litestar],
) -> None:
    headers = await signed_in(chat_client)
    conversation = await chat_client.post("/api/v1/conversations", json={}, headers=headers)
    url = f"/api/v1/conversations/{conversation.json()['id']}/messages"

    refused = await chat_client.post(url, json={"content": "漢" * 8000}, headers=headers)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "context_length_exceeded" and "too long" in error["message"]
    assert (await chat_client.get(url, headers=headers)).json() == []  # nothing stored

    # Each of these fits alone; together they are longer than the 2,048-token context.
    words = random.Random(7).choices(["river", "lamp", "quiet", "garden", "seven", "blue"], k=600)
    for n in range(4):
        sent = await chat_client.post(
            url, json={"content": f"{n}: {' '.join(words)}"}, headers=headers
        )
        assert sent.status_code == 200, sent.text
        assert sent.json()["done"]["usage"]["prompt_tokens"] + 256 <= 2048
    hi = await chat_client.post(url, json={"content": "hi"}, headers=headers)
    assert hi.status_code == 200, hi.text
    stored = (await chat_client.get(url, headers=headers)).json()
    assert [m["content"] for m in stored if m["role"] == "user"][-1] == "hi"
    assert len(stored) == 10


def _history(pairs: int, kind: str) -> list[ChatMessage]:
    history = []
    for n in range(pairs):
        history.append(ChatMessage("user", f"{n} {TEXTS[kind][:300]}"))
        history.append(ChatMessage("assistant", f"{n} ok"))
    return history
