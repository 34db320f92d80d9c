"""The content judge in the running service: ``COMPANION_CONTENT_JUDGE`` on, real
llama.cpp engines (the tiny GGUF), real PostgreSQL, Redis and MiniLM.

The tiny model is random, so what it judges is arbitrary; its reply is still a
valid label (the request is constrained by a JSON schema), and greedy decoding
makes it the same every run. What the tests show is where the answer goes: a
chat turn's unsure message is labelled and routed by it.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import catalog_settings, signed_in
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from inference.classifiers.content import NO_CONTEXT, ContentClassifier, ContentResult
from inference.classifiers.content_judge import EngineJudge
from inference.classifiers.content_rules import CONTENT_LABELS
from inference.config import ChatEngineConfig
from inference.embedder import SentenceEmbedder
from inference.errors import UnknownModel
from inference.factory import create_engine
from memory.session import SessionState
from server.app import create_app
from server.models_setup import open_models
from server.resources import content_judge
from server.routing import RouteDecision, decide_route
from server.settings import Settings

# Layers 1-3 call this romantic, unsure (a normal-route reply). The tiny model judges
# it self_harm, which moves the turn to the crisis route: the answer visibly decides.
# Should a llama.cpp upgrade change the tiny model's answer, pick another unsure
# message whose judged route differs from its cheap one.
UNSURE = "Send me a virtual hug, I need it."


@pytest.fixture
async def judged_client(
    settings: Settings, tiny_gguf: Path
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The whole app as `companion serve` builds it with COMPANION_CONTENT_JUDGE=chat."""
    engine = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)
    full = dataclasses.replace(
        settings, chat_engine=engine, embedder="minilm", content_judge="chat"
    )
    async with AsyncTestClient(create_app(full), timeout=120) as client:
        yield client


def first_message_route(content: ContentResult) -> RouteDecision:
    """How routing decides ``content`` as the first message of a new conversation."""
    now = datetime.now(UTC)
    return decide_route(SessionState(uuid.uuid4(), uuid.uuid4(), now, now), content, minor=False)


async def test_an_unsure_message_is_labelled_and_routed_by_the_judge(
    judged_client: AsyncTestClient[Litestar], embedder: SentenceEmbedder
) -> None:
    cheap = ContentClassifier(embedder).classify_batch([UNSURE])[0]
    assert cheap.unsure  # layers 1-3 leave it to the judge
    headers = await signed_in(judged_client)
    created = await judged_client.post("/api/v1/conversations", json={}, headers=headers)
    url = f"/api/v1/conversations/{created.json()['id']}/messages"

    turn = await judged_client.post(url, json={"content": UNSURE}, headers=headers)
    assert turn.status_code == 200, turn.text
    meta = turn.json()["meta"]
    reply = (await judged_client.get(url, headers=headers)).json()[1]
    judged = meta["content_label"]
    assert f"judge: {judged}" in reply["metadata"]["reasons"]  # the judge gave the label

    expected = first_message_route(dataclasses.replace(cheap, label=judged, unsure=False))
    without = first_message_route(cheap)
    routed = (meta["route"], meta["needs_verification"])
    assert routed == (expected.route, expected.needs_verification)
    assert routed != (without.route, without.needs_verification)  # and it changed the route


async def test_a_judge_past_its_deadline_gives_way_to_the_cheap_answer(
    tiny_gguf: Path, embedder: SentenceEmbedder
) -> None:
    config = ChatEngineConfig(model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4)
    engine = create_engine(config)
    assert engine is not None
    await engine.start()
    try:
        late = EngineJudge(engine, deadline_s=0.001)
        classifier = ContentClassifier(embedder, judge=late)
        cheap = classifier.classify_batch([UNSURE])[0]
        started = time.perf_counter()
        result = await classifier.classify(UNSURE)
        assert time.perf_counter() - started < 2.0  # the turn did not wait for an answer
        assert (result.label, result.layer) == (cheap.label, cheap.layer)
        assert any(reason.startswith("judge failed") for reason in result.reasons)
        answered = await EngineJudge(engine).judge(UNSURE, NO_CONTEXT)  # the engine still serves
        assert answered[0] in CONTENT_LABELS
    finally:
        await engine.close()


async def test_the_judge_runs_on_its_own_pinned_catalog_model(
    settings: Settings, tiny_gguf: Path, shared_redis: Redis
) -> None:
    configured = dataclasses.replace(catalog_settings(settings, tiny_gguf), content_judge="b")
    async with AsyncExitStack() as stack:
        models = await open_models(stack, configured, shared_redis)
        assert models is not None
        assert models.state("b").loaded and models.state("b").pinned  # never unloaded
        judge = content_judge(configured, models, models.loaded_engine("tiny"))
        assert judge is not None and judge.engine is models.loaded_engine("b")
        label, _ = await judge.judge("Can you stay with me tonight?", NO_CONTEXT)
        assert label in CONTENT_LABELS


async def test_a_judge_model_that_cannot_run_stops_the_start(
    settings: Settings, tiny_gguf: Path, shared_redis: Redis
) -> None:
    configured = dataclasses.replace(catalog_settings(settings, tiny_gguf), content_judge="nope")
    with pytest.raises(UnknownModel, match="COMPANION_CONTENT_JUDGE=nope"):
        async with AsyncExitStack() as stack:
            await open_models(stack, configured, shared_redis)


async def test_erasing_a_user_drops_the_judges_kv_of_their_messages(tiny_gguf: Path) -> None:
    """The judge asks under the writer's id, so `forget` clears it with their own KV."""
    config = ChatEngineConfig(
        model_path=tiny_gguf, model_id="tiny", n_ctx=2048, n_slots=4, process="inline"
    )
    engine = create_engine(config)
    assert engine is not None
    await engine.start()
    try:
        judge = EngineJudge(engine, deadline_s=60)
        context = dataclasses.replace(NO_CONTEXT, user_id="alice")
        assert judge.request(UNSURE, context).user_id == "alice"
        await judge.judge(UNSURE, context)
        assert engine.stats().kv_cells_cached > 0  # the judged message stays as cache
        await engine.forget("alice")
        assert engine.stats().kv_cells_cached == 0
    finally:
        await engine.close()
