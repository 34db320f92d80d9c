"""Every error response is JSON: ``{"error": {"code", "message"}}``, never a stack trace.

One table (`exception_handlers`) maps exceptions to responses. Client errors
keep their message; server errors say only what kind of failure it was, and
the details go to the log under the request id, which the body repeats.
"""

from __future__ import annotations

import logging
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
    InvalidRequest,
    ModelBusy,
    UnknownModel,
)
from memory.errors import DatabaseUnavailable
from memory.messages import TailMoved
from memory.session import SessionUnavailableError
from memory.users import ErasureFailed
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


def _overloaded(_: Request[Any, Any, Any], exc: EngineOverloaded) -> Response[dict[str, Any]]:
    retry_after = str(max(1, round(exc.retry_after_s)))
    return error_response(503, str(exc), code="overloaded", headers={"Retry-After": retry_after})


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
    EngineOverloaded: _overloaded,
    ContextLengthExceeded: _status_error(413, "context_length_exceeded"),
    InvalidRequest: _status_error(400, "invalid_request"),
    DeadlineExceeded: _status_error(504, "deadline_exceeded"),
    EngineUnavailable: _status_error(503, "engine_unavailable"),
    UnknownModel: _status_error(404, "model_not_found"),
    ModelBusy: _status_error(409, "model_busy"),
    ErasureFailed: _status_error(503, "unavailable"),
    TailMoved: _status_error(409, "conflict"),
    UnicodeDecodeError: _undecodable,
    **dict.fromkeys(BACKING_SERVICE_ERRORS, _backing_service_down),
    Exception: _unhandled,
}
