"""/v1/embeddings: bounded input, clear 400s (the hardening review's finding 5)."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

from server.openai_api.service import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_INPUTS

MODEL = "all-minilm-l6-v2"


async def test_input_is_capped_with_a_clear_error(chat_client: AsyncTestClient[Litestar]) -> None:
    url = "/v1/embeddings"
    at_limit = await chat_client.post(
        url, json={"model": MODEL, "input": [f"text {i}" for i in range(MAX_EMBEDDING_INPUTS)]}
    )
    assert at_limit.status_code == 200, at_limit.text
    assert len(at_limit.json()["data"]) == MAX_EMBEDDING_INPUTS

    too_many = await chat_client.post(
        url, json={"model": MODEL, "input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "input"
    assert str(MAX_EMBEDDING_INPUTS) in too_many.json()["error"]["message"]

    too_long = await chat_client.post(
        url, json={"model": MODEL, "input": "word " * (MAX_EMBEDDING_CHARS // 5 + 1)}
    )
    assert too_long.status_code == 400
    assert "characters" in too_long.json()["error"]["message"]
