"""One table maps inference errors to HTTP: both APIs answer each error from its row."""

from __future__ import annotations

from typing import Any

import pytest
from litestar import Router, get
from litestar.testing import create_test_client

from inference.errors import EngineOverloaded, InferenceError, NoRoomForModel
from server.errors import INFERENCE_ERRORS, InferenceErrorKind, exception_handlers
from server.openai_api.errors import openai_exception_handlers

_RAISED: list[InferenceError] = []


@get("/raise", sync_to_thread=False)
def _raise() -> None:
    raise _RAISED[-1]


def answers(error: InferenceError) -> tuple[dict[str, Any], dict[str, Any]]:
    """The status, Retry-After and error body each API sends for ``error``."""
    _RAISED.append(error)
    openai = Router("/v1", route_handlers=[_raise], exception_handlers=openai_exception_handlers)
    with create_test_client([_raise, openai], exception_handlers=exception_handlers) as client:
        replies = client.get("/raise"), client.get("/v1/raise")
    return tuple(  # type: ignore[return-value]
        {"status": r.status_code, "retry": r.headers.get("retry-after"), **r.json()["error"]}
        for r in replies
    )


@pytest.mark.parametrize(
    ("kind", "row"), INFERENCE_ERRORS, ids=[k.__name__ for k, _ in INFERENCE_ERRORS]
)
def test_both_apis_answer_an_inference_error_from_its_row(
    kind: type[InferenceError], row: InferenceErrorKind
) -> None:
    error = EngineOverloaded("no", 2.6) if kind is EngineOverloaded else kind("no")
    ours, theirs = answers(error)
    assert ours["status"] == theirs["status"] == row.status
    assert (ours["code"], ours["message"]) == (row.code, "no")
    assert (theirs["code"], theirs["param"], theirs["message"]) == (
        row.openai_code,
        row.openai_param,
        "no",
    )
    assert theirs["type"] == ("server_error" if row.status >= 500 else "invalid_request_error")
    assert (ours["retry"], theirs["retry"]) == (("3", "3") if row.retry else (None, None))


def test_a_subclass_answers_from_its_parents_row_with_its_own_retry_after() -> None:
    ours, theirs = answers(NoRoomForModel("no room", retry_after_s=0.2))
    assert ours["status"] == theirs["status"] == 503
    assert ours["code"] == theirs["code"] == "overloaded"
    assert ours["retry"] == theirs["retry"] == "1"  # whole seconds, at least one
