"""Every error response is JSON: ``{"error": {"code", "message"}}``, never a stack trace.

One table (`exception_handlers`) maps exceptions to responses. Client errors
keep their message; server errors say only what kind of failure it was, and
the details go to the log under the request id, which the body repeats.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

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


def _http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if status >= 500:
        log.error("server error", extra={"status": status, "detail": exc.detail})
        message = HTTPStatus(status).phrase
    else:
        message = exc.detail or HTTPStatus(status).phrase
    details = exc.extra if isinstance(exc, ValidationException) else None
    return error_response(status, message, headers=exc.headers, details=details)


def _unhandled(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "Internal Server Error")


exception_handlers: ExceptionHandlersMap = {
    HTTPException: _http_exception,
    Exception: _unhandled,
}
