"""OpenAI's error shape for everything under /v1.

``{"error": {"message", "type", "param", "code"}}`` with OpenAI's statuses, so
SDKs raise their usual exceptions (BadRequestError, AuthenticationError,
NotFoundError, RateLimitError...). The rest of the service keeps its own
shape (`server.errors`).
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.types import ExceptionHandlersMap

from server.body_errors import decode_failure
from server.concurrency import TooManyInProgress
from server.errors import BACKING_SERVICE_ERRORS, InferenceErrorKind, inference_error_kind
from server.errors import exception_handlers as app_exception_handlers
from server.ratelimit import RateLimited

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An error to answer in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.param, self.code, self.headers = param, code, headers


def bad_param(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="invalid_value")


def _respond(error: OpenAIError) -> Response[dict[str, Any]]:
    return Response(_body(error), status_code=error.status, headers=error.headers)


def _body(error: OpenAIError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.error_type,
            "param": error.param,
            "code": error.code,
        }
    }


def stream_error(exc: Exception) -> dict[str, Any]:
    """The body of the ``data:`` event that ends a stream which failed after it started
    (as vLLM's server sends it; OpenAI's SDK raises `APIError` on it)."""
    return _body(_translate(exc))


_UNDECODABLE = {
    "utf8": "The request body is not valid UTF-8.",
    "json": "The request body is not valid JSON.",
}


def _translate(exc: Exception) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    kind = inference_error_kind(exc)
    if kind is not None:
        return _inference(exc, kind)
    if isinstance(exc, BACKING_SERVICE_ERRORS):
        log.warning("backing service unavailable", extra={"error": repr(exc)})
        return OpenAIError(
            503,
            "A backing service is unavailable; try again shortly.",
            error_type="server_error",
            code="unavailable",
            headers={"Retry-After": "1"},
        )
    if isinstance(exc, TooManyInProgress):
        return OpenAIError(
            429, exc.detail, error_type="requests", code="too_many_in_progress", headers=exc.headers
        )
    if isinstance(exc, RateLimited):
        return OpenAIError(
            429, exc.detail, error_type="requests", code="rate_limit_exceeded", headers=exc.headers
        )
    if isinstance(exc, NotAuthorizedException):
        return OpenAIError(401, exc.detail, code="invalid_api_key")
    failure = decode_failure(exc)
    if failure is not None:  # our wording, whatever the decoder said (server.body_errors)
        return OpenAIError(400, _UNDECODABLE[failure])
    if isinstance(exc, ValidationException):
        return OpenAIError(400, _validation_message(exc))
    if isinstance(exc, HTTPException) and exc.status_code < 500:
        return OpenAIError(exc.status_code, exc.detail, headers=exc.headers)
    log.error("unhandled error in /v1", exc_info=exc)
    return OpenAIError(
        500, "The server had an error processing your request.", error_type="server_error"
    )


def _inference(exc: Exception, kind: InferenceErrorKind) -> OpenAIError:
    """An inference error with its own message, status and codes from the one table."""
    return OpenAIError(
        kind.status,
        str(exc),
        error_type="server_error" if kind.status >= 500 else "invalid_request_error",
        param=kind.openai_param,
        code=kind.openai_code,
        headers=kind.headers(exc),
    )


def _validation_message(exc: ValidationException) -> str:
    details = exc.extra if isinstance(exc.extra, list) else []
    parts = [_detail(d) for d in details if isinstance(d, dict) and d.get("message")]
    return "; ".join(parts) or exc.detail


def _detail(detail: dict[str, Any]) -> str:
    """One validation failure, with the field it is about (Litestar names the body "data")."""
    key = detail.get("key")
    where = f" (at `{key}`)" if key and key != "data" else ""
    return f"{detail['message']}{where}"


def _handle(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    return _respond(_translate(exc))


# Litestar picks the handler of the nearest class in the exception's MRO across all
# layers, so every class the app-wide map handles must be overridden here too.
openai_exception_handlers: ExceptionHandlersMap = {
    exc_type: _handle for exc_type in (*app_exception_handlers, Exception)
}
