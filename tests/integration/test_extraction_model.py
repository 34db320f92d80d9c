"""The memory jobs' model (``COMPANION_MEMORY_MODEL``) in the running service: real
llama.cpp engines (the tiny GGUF as catalog models), real PostgreSQL, Redis and MiniLM.

What the tests show is where the jobs' requests go and when the service refuses
to start; what a model extracts is measured by scripts/bench_extraction.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg
import pytest
from helpers import catalog_settings, new_user
from redis.asyncio import Redis

from inference.embedder import SentenceEmbedder
from inference.engine import Engine
from inference.errors import UnknownModel
from memory.episodes import Turn
from memory.extraction import Extractor
from memory.longterm import LongTermMemory
from memory.messages import ConversationStore, MessageStore
from server.memory_jobs import EngineJSONGenerator
from server.models_setup import memory_model_id, open_models
from server.resources import memory_engine
from server.settings import Settings, load_settings


def test_the_setting_names_chat_or_a_catalog_model() -> None:
    assert load_settings({}).memory_model == "chat"
    assert load_settings({"COMPANION_MEMORY_MODEL": " Chat "}).memory_model == "chat"
    named = load_settings({"COMPANION_MEMORY_MODEL": "qwen2.5-7b"})
    assert named.memory_model == "qwen2.5-7b" and memory_model_id(named) == "qwen2.5-7b"
    # the default chat model named by its id is the chat engine itself
    assert (
        memory_model_id(load_settings({"COMPANION_MEMORY_MODEL": "smollm2-135m-instruct"})) is None
    )
    # an API process without the worker never asks it, so neither loads nor requires it
    off = {"COMPANION_MEMORY_MODEL": "qwen2.5-7b", "COMPANION_MEMORY_WORKER": "off"}
    assert memory_model_id(load_settings(off)) is None


async def test_memory_jobs_run_on_their_own_pinned_catalog_model(
    settings: Settings,
    tiny_gguf: Path,
    shared_redis: Redis,
    pool: asyncpg.Pool,
    embedder: SentenceEmbedder,
) -> None:
    configured = dataclasses.replace(catalog_settings(settings, tiny_gguf), memory_model="b")
    async with AsyncExitStack() as stack:
        models = await open_models(stack, configured, shared_redis)
        assert models is not None
        assert models.state("b").loaded and models.state("b").pinned  # never unloaded
        chat = models.loaded_engine("tiny")
        assert chat is not None
        engine = memory_engine(configured, models, chat)
        assert engine is models.loaded_engine("b") and engine is not chat
        user = await new_user(pool)
        conversation = (await ConversationStore(pool).create(user)).id
        said = await MessageStore(pool).append(conversation, user, "user", "I moved to Oslo.")
        store = LongTermMemory(pool, embedder)
        extractor = Extractor(pool, store, embedder, EngineJSONGenerator(engine, max_tokens=64))
        chat_before = chat.stats().prompt_tokens
        await extractor.extract(user, conversation, [Turn(said.id, "user", said.content)])
        await store.close()
        assert await prompt_tokens_seen(engine)  # the job asked the memory model
        assert chat.stats().prompt_tokens == chat_before  # and not the chat model


async def prompt_tokens_seen(engine: Engine) -> int:
    """The engine's prompt tokens once its process has reported them (a snapshot a
    quarter second old at most), or 0 after five seconds."""
    for _ in range(50):
        if engine.stats().prompt_tokens:
            return engine.stats().prompt_tokens
        await asyncio.sleep(0.1)
    return 0


async def test_a_memory_model_that_cannot_run_stops_the_start(
    settings: Settings, tiny_gguf: Path, shared_redis: Redis
) -> None:
    configured = dataclasses.replace(catalog_settings(settings, tiny_gguf), memory_model="nope")
    with pytest.raises(UnknownModel, match="COMPANION_MEMORY_MODEL=nope"):
        async with AsyncExitStack() as stack:
            await open_models(stack, configured, shared_redis)


async def test_the_chat_model_serves_the_jobs_by_default(
    settings: Settings, tiny_gguf: Path, shared_redis: Redis
) -> None:
    configured = catalog_settings(settings, tiny_gguf)
    async with AsyncExitStack() as stack:
        models = await open_models(stack, configured, shared_redis)
        assert models is not None
        chat = models.loaded_engine("tiny")
        assert chat is not None and memory_engine(configured, models, chat) is chat
        assert not models.state("b").pinned
