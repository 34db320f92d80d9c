"""The packaged all-MiniLM-L6-v2 embedder: real vectors, batched across concurrent callers."""

from __future__ import annotations

import asyncio
import contextvars
import time
import uuid

import numpy as np

from inference.embedder import SentenceEmbedder, mark_background


def test_vectors_are_normalised_and_meaningful(embedder: SentenceEmbedder) -> None:
    vectors = embedder.encode(["I adopted a kitten", "I got a new cat", "Tax forms are due"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.2


async def test_concurrent_callers_share_model_calls(embedder: SentenceEmbedder) -> None:
    texts = [f"message number {i} about my day" for i in range(12)]
    solo = embedder.encode(texts)
    calls: list[int] = []
    original = embedder.encode

    def counting(batch: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(len(batch))
        return original(batch, batch_size)

    embedder.encode = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    finally:
        del embedder.encode  # back to the class's method
    assert len(calls) < len(texts)  # fewer model calls than callers
    assert sum(calls) == len(texts)
    for i, vector in enumerate(results):
        assert vector.shape == (1, 384)
        assert np.allclose(vector[0], solo[i], atol=1e-5)


async def test_the_same_text_asked_at_once_is_encoded_once(embedder: SentenceEmbedder) -> None:
    calls: list[list[str]] = []
    original = embedder.encode

    def counting(batch: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(batch))
        return original(batch, batch_size)

    embedder.encode = counting  # type: ignore[method-assign]
    try:
        message = "I'm so tired of everything today"
        results = await asyncio.gather(
            embedder.embed([message]), embedder.embed([message, "other"]), embedder.embed([message])
        )
        again = await embedder.embed(["other", message])  # asked again soon: no model call
        fresh = await embedder.embed([message, "a new text"])
    finally:
        del embedder.encode
    assert calls == [[message, "other"], [message, "a new text"]]  # each distinct text once
    assert np.allclose(again[0], results[1][1]) and np.allclose(again[1], results[0][0])
    assert np.allclose(fresh[0], results[0][0])
    assert [r.shape for r in results] == [(1, 384), (2, 384), (1, 384)]
    assert np.allclose(results[0], results[2]) and np.allclose(results[0][0], results[1][0])
    assert not np.allclose(results[1][0], results[1][1])


async def test_empty_input_gives_an_empty_matrix(embedder: SentenceEmbedder) -> None:
    assert (await embedder.embed([])).shape == (0, 384)


async def test_a_text_asked_for_while_it_is_being_embedded_waits_for_it(
    embedder: SentenceEmbedder,
) -> None:
    calls: list[list[str]] = []
    original = embedder.encode

    def slow(batch: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(batch))
        time.sleep(0.3)  # the model is busy with this batch
        return original(batch, batch_size)

    embedder.encode = slow  # type: ignore[method-assign]
    try:
        text = "a message asked for twice, a moment apart"
        first = asyncio.ensure_future(embedder.embed([text]))
        await asyncio.sleep(0.1)
        second = await embedder.embed([text])
        assert np.allclose(await first, second)
    finally:
        del embedder.encode
    assert calls == [[text]]


def test_onnx_runtime_gives_torchs_vectors(embedder: SentenceEmbedder) -> None:
    # The service default runs the transformer on ONNX Runtime; the vectors must be the
    # ones torch makes, or stored memories and the classifier heads would drift.
    assert embedder.active_runtime == "onnx"
    on_torch = SentenceEmbedder(runtime="torch")
    texts = [
        "I adopted a kitten",
        "",
        "émotions 😊 日本語",
        "long " * 400,  # past the model's 256-token limit: truncated the same way
        *(f"batch member {i} with a different length {'x' * i}" for i in range(70)),
    ]
    try:
        assert on_torch.active_runtime == "torch"
        expected = on_torch.encode(texts, batch_size=16)
        alone = on_torch.encode(texts[:1])
    finally:
        on_torch.close()
    assert np.allclose(embedder.encode(texts[:1]), alone, atol=1e-4)  # no padding at all
    got = embedder.encode(texts, batch_size=16)  # several batches, sorted by length
    assert got.shape == expected.shape and got.dtype == np.float32
    assert np.min(np.sum(got * expected, axis=1)) > 0.99999
    assert np.allclose(got, expected, atol=1e-4)


async def test_a_requests_texts_go_before_background_work(embedder: SentenceEmbedder) -> None:
    calls: list[list[str]] = []
    original = embedder.encode

    def counting(batch: list[str], batch_size: int = 64) -> np.ndarray:
        calls.append(list(batch))
        return original(batch, batch_size)

    background = contextvars.copy_context()  # as the in-process memory worker runs
    background.run(mark_background)
    new_memories = [f"a new memory to store {uuid.uuid4()}" for _ in range(3)]
    message = f"the user's message {uuid.uuid4()}"
    embedder.encode = counting  # type: ignore[method-assign]
    try:
        job = asyncio.create_task(embedder.embed(new_memories), context=background)
        stored, asked = await asyncio.gather(job, embedder.embed([message]))
    finally:
        del embedder.encode
    assert calls == [[message], new_memories]  # both were waiting: the request's first
    assert stored.shape == (3, 384) and asked.shape == (1, 384)
