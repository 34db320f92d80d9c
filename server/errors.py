"""Every error response is JSON: ``{"error": {"code", "message"}}``, never a stack trace.

One table (`exception_handlers`) maps exceptions to responses. Client errors
keep their message; server errors say only what kind of failure it was, and
the details go to the log under the request id, which the body repeats.

ARCHITECTURE: the inference errors' statuses and codes are one table,
`INFERENCE_ERRORS`, read by both error shapes: this module's and OpenAI's
(`server.openai_api.errors`). Only the codes OpenAI clients know by another
name, and OpenAI's ``param``, are written beside the shared ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from inference.errors import (
    ContextLengthExceeded,
    DeadlineExceeded,
    EngineOverloaded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
    ModelBusy,
    UnknownModel,
)
from memory.errors import (
    DatabaseUnavailable,
    ErasureFailed,
    SessionUnavailableError,
    TailMoved,
)
from server.body_errors import decode_failure
from server.logs import request_id_var

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


def error_code(status: int) -> str:
    """A stable snake_case code for an HTTP status."""
    if status in _CODES:
        return _CODES[status]
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
    details: Any = None,
) -> Response[dict[str, Any]]:
    """The one shape of every error body."""
    error: dict[str, Any] = {"code": code or error_code(status), "message": message}
    if details:
        error["details"] = details
    request_id = request_id_var.get()
    if request_id:
        error["request_id"] = request_id
    return Response({"error": error}, status_code=status, headers=headers)


_UNDECODABLE = {
    "utf8": "the request body is not valid UTF-8",
    "json": "the request body is not valid JSON",
}


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    failure = decode_failure(exc)
    if failure is not None:  # our wording, whatever the decoder said (server.body_errors)
        return error_response(400, _UNDECODABLE[failure], code="bad_request")
    status = exc.status_code
    if status >= 500:
        log.error("server error", extra={"status": status, "detail": exc.detail})
        message = HTTPStatus(status).phrase
    else:
        message = exc.detail or HTTPStatus(status).phrase
    details = exc.extra if isinstance(exc, ValidationException) else None
    return error_response(status, message, headers=exc.headers, details=details)


@dataclass(frozen=True, slots=True)
class InferenceErrorKind:
    """How an inference error is answered over HTTP, by either API."""

    status: int
    code: str  # the companion API's code
    openai_code: str | None  # the OpenAI API's code (its clients know some by other names)
    openai_param: str | None = None  # the request field OpenAI's body blames
    retry: bool = False  # send Retry-After (`EngineOverloaded.retry_after_s`)

    def headers(self, exc: Exception) -> dict[str, str] | None:
        """Retry-After, in whole seconds (at least one), where the error has one."""
        if not self.retry or not isinstance(exc, EngineOverloaded):
            return None
        return {"Retry-After": str(max(1, round(exc.retry_after_s)))}


# Most specific class first: the first `isinstance` match answers (`inference_error_kind`).
INFERENCE_ERRORS: tuple[tuple[type[InferenceError], InferenceErrorKind], ...] = (
    (EngineOverloaded, InferenceErrorKind(503, "overloaded", "overloaded", retry=True)),
    (UnknownModel, InferenceErrorKind(404, "model_not_found", "model_not_found", "model")),
    (ModelBusy, InferenceErrorKind(409, "model_busy", "model_busy")),
    (
        ContextLengthExceeded,
        InferenceErrorKind(413, "context_length_exceeded", "context_length_exceeded", "messages"),
    ),
    (InvalidRequest, InferenceErrorKind(400, "invalid_request", None)),
    (DeadlineExceeded, InferenceErrorKind(504, "deadline_exceeded", "timeout")),
    (EngineUnavailable, InferenceErrorKind(503, "engine_unavailable", "engine_unavailable")),
)


def inference_error_kind(exc: Exception) -> InferenceErrorKind | None:
    """The `INFERENCE_ERRORS` row that answers ``exc``; None for any other error."""
    for kind, answer in INFERENCE_ERRORS:
        if isinstance(exc, kind):
            return answer
    return None


def _inference_error(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    kind = inference_error_kind(exc)
    if kind is None:  # only inference errors are routed here
        return _unhandled(_, exc)
    return error_response(kind.status, str(exc), code=kind.code, headers=kind.headers(exc))


def _status_error(status: int, code: str) -> Any:
    def handle(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
        return error_response(status, str(exc), code=code)

    return handle


# Redis or PostgreSQL out of reach: a retryable 503, never a 500. asyncpg raises the
# connection-class errors for a lost connection and the operator-intervention class while
# PostgreSQL shuts down or starts; a new connection that finds nothing listening is
# DatabaseUnavailable (memory.db).
BACKING_SERVICE_ERRORS: tuple[type[Exception], ...] = (
    SessionUnavailableError,
    RedisConnectionError,
    RedisTimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    DatabaseUnavailable,
    ConnectionError,
)


def _backing_service_down(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Redis (sessions) unreachable: a retryable 503, not a 500; the details go to the log."""
    log.warning("backing service unavailable", extra={"error": repr(exc)})
    return error_response(
        503,
        "a backing service is unavailable; try again shortly",
        code="unavailable",
        headers={"Retry-After": "1"},
    )


def _undecodable(_: Request[Any, Any, Any], exc: UnicodeDecodeError) -> Response[dict[str, Any]]:
    # older msgspec releases let a body that is not UTF-8 escape as this
    return error_response(400, _UNDECODABLE["utf8"], code="bad_request")


def _unhandled(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "Internal Server Error")


exception_handlers: ExceptionHandlersMap = {
    HTTPException: _http_exception,
    **{kind: _inference_error for kind, _ in INFERENCE_ERRORS},
    ErasureFailed: _status_error(503, "unavailable"),
    TailMoved: _status_error(409, "conflict"),
    UnicodeDecodeError: _undecodable,
    **dict.fromkeys(BACKING_SERVICE_ERRORS, _backing_service_down),
    Exception: _unhandled,
}
