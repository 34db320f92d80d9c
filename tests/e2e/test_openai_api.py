"""The official OpenAI Python SDK against a running server (tiny model, keys required)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from support import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=server.admin_key, max_retries=0)


def chat(  # type: ignore[no-untyped-def]
    client: openai.OpenAI,
    model: str,
    messages: list[dict[str, str]],
    max_tokens: int = 16,
    **extra: object,
):
    return client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=max_tokens,
        **extra,  # type: ignore[arg-type]
    )


HELLO = [
    {"role": "system", "content": "You are a kind companion who remembers things."},
    {"role": "user", "content": "Hi! I adopted a cat called Miso."},
]


def test_models_lists_chat_and_embedding_models(
    client: openai.OpenAI, server: RunningServer
) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids[0] == server.model_id  # loaded models first
    # the packaged SmolLM2 is in the catalog: loadable on demand
    assert set(ids) == {server.model_id, "smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert client.models.retrieve(server.model_id).id == server.model_id


def test_chat_completion_and_stream_agree(client: openai.OpenAI, server: RunningServer) -> None:
    whole = chat(client, server.model_id, HELLO, user="a")
    assert whole.object == "chat.completion"
    assert whole.choices[0].finish_reason in {"stop", "length"}
    assert whole.usage is not None
    assert whole.usage.completion_tokens > 0

    stream = chat(
        client,
        server.model_id,
        HELLO,
        user="a",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None  # the usage chunk comes last, with no choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_second_turn_reports_cached_prompt_tokens(
    client: openai.OpenAI, server: RunningServer
) -> None:
    first = chat(client, server.model_id, HELLO, user="cache-test")
    assert first.usage is not None
    follow_up = [
        *HELLO,
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "She likes to sleep on my keyboard."},
    ]
    second = chat(client, server.model_id, follow_up, user="cache-test")
    assert second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    assert details.cached_tokens >= first.usage.prompt_tokens


def test_json_schema_output_parses_and_validates(
    client: openai.OpenAI, server: RunningServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"mood": {"type": "string", "enum": ["calm", "happy", "sad"]}},
        "required": ["mood"],
    }
    reply = chat(
        client,
        server.model_id,
        HELLO,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "mood", "schema": schema}},
    )
    parsed = json.loads(reply.choices[0].message.content or "")
    assert parsed["mood"] in {"calm", "happy", "sad"}


def test_text_completion(client: openai.OpenAI, server: RunningServer) -> None:
    done = client.completions.create(
        model=server.model_id, prompt="Once upon a time", max_tokens=8, temperature=0
    )
    assert done.object == "text_completion"
    assert done.usage is not None
    assert done.usage.completion_tokens == 8
    assert done.choices[0].finish_reason == "length"


def test_embeddings_have_384_dimensions(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a dog"])
    assert [len(item.embedding) for item in result.data] == [384, 384]
    assert result.usage.prompt_tokens > 0


def test_errors_have_openai_shape_and_status(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        chat(client, "no-such-model", HELLO)
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]

    with pytest.raises(openai.BadRequestError) as bad:
        chat(client, server.model_id, HELLO, n=2)
    assert bad.value.body["param"] == "n"  # type: ignore[index]

    with pytest.raises(openai.APIStatusError) as too_long:
        chat(client, server.model_id, [{"role": "user", "content": "word " * 3000}])
    assert too_long.value.status_code == 413

    stranger = openai.OpenAI(base_url=client.base_url, api_key="sk-cmp-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_admin_creates_and_revokes_keys(server: RunningServer) -> None:
    admin = {"Authorization": f"Bearer {server.admin_key}"}
    created = httpx.post(
        f"{server.base_url}/api/v1/admin/keys", json={"username": "bea"}, headers=admin, timeout=10
    )
    assert created.status_code == 201, created.text
    key, key_id = created.json()["key"], created.json()["info"]["id"]
    bea = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    assert bea.models.list().data

    forbidden = httpx.get(
        f"{server.base_url}/api/v1/admin/keys", headers={"Authorization": f"Bearer {key}"}
    )
    assert forbidden.status_code == 403
    revoked = httpx.delete(f"{server.base_url}/api/v1/admin/keys/{key_id}", headers=admin)
    assert revoked.status_code == 204
    with pytest.raises(openai.AuthenticationError):
        bea.models.list()


def test_client_disconnect_aborts_generation(client: openai.OpenAI, server: RunningServer) -> None:
    stream = chat(client, server.model_id, HELLO, max_tokens=1500, stream=True, user="gone")
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()  # the client goes away mid-reply
    # Wait for both: the running gauge comes from the engine's periodic stats and may
    # read 0 before the request was ever counted, while the abort is counted when the
    # engine reports the request's end.
    deadline = time.monotonic() + 15
    running = finished = None
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
        running = _gauge(metrics, "companion:num_requests_running")
        finished = _gauge(metrics, 'companion:request_success_total{finished_reason="abort"')
        if running == 0 and finished is not None and finished >= 1:
            break
        time.sleep(0.3)
    assert running == 0
    assert finished is not None and finished >= 1


def _gauge(metrics: str, prefix: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return None
