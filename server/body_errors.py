"""Request bodies that cannot be decoded, in the service's own words.

Litestar decodes JSON bodies with msgspec and answers a body it cannot decode
with a 400 that carries msgspec's message. Those messages are msgspec's, not
ours, and they change between its releases (0.19 let a `UnicodeDecodeError`
escape; 0.23 says "Invalid UTF-8 encoded string"), which changed the API's
error contract under it. So the service decides itself:

- `check_body`, a ``before_request`` hook, refuses a JSON body that is not
  UTF-8 with `UndecodableBody` before any decoder sees it, and on the
  companion API (which stores what it is sent) NUL characters in any string
  of the body or the query with `NulInText`: one rule for every text field,
  since PostgreSQL text refuses NUL and a 500 would follow;
- `decode_failure` tells the error tables which of the two failures an
  exception is (a msgspec `DecodeError` anywhere in its cause chain is
  malformed JSON), and each table words it in its own API's style.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from litestar import Request
from litestar.exceptions import ClientException

DecodeFailure = Literal["utf8", "json"]

_BODY_METHODS = {"POST", "PUT", "PATCH"}
# The companion API stores what it is sent in PostgreSQL, whose text refuses NUL; /v1 only
# passes text to the model (the engines drop NUL from what they generate).
_STORING_PREFIX = "/api/"
_NUL_MESSAGE = "text must not contain NUL characters (\\u0000)"
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")


class UndecodableBody(ClientException):
    """A JSON request body that is not UTF-8."""


class NulInText(ClientException):
    """Text bound for storage with a NUL character in it."""


async def check_body(request: Request[Any, Any, Any]) -> None:
    """Refuse a JSON body that is not UTF-8 (the body is read once; handlers reuse it), and,
    on the companion API, NUL characters in any text of the body or the query."""
    stored = request.url.path.startswith(_STORING_PREFIX)
    if stored and any("\x00" in value for value in request.query_params.values()):
        raise NulInText(_NUL_MESSAGE)
    if request.method not in _BODY_METHODS or request.content_type[0] in _FORMS:
        return
    body = await request.body()
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UndecodableBody("the request body is not valid UTF-8") from exc
    if stored and b"\\u0000" in body and _holds_nul(body):
        raise NulInText(_NUL_MESSAGE)


def _holds_nul(body: bytes) -> bool:
    """Whether any string of the JSON ``body`` (keys too) holds a NUL; False if not JSON
    (the handler's decoder then says so)."""
    try:
        document = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def decode_failure(exc: BaseException) -> DecodeFailure | None:
    """Which decoding failure ``exc`` stands for; None when it is none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UndecodableBody | UnicodeDecodeError):
            return "utf8"
        if isinstance(current, msgspec.ValidationError):
            return None  # well-formed JSON of the wrong shape: the validator's words stand
        if isinstance(current, msgspec.DecodeError):
            return "json"
        current = current.__cause__ or current.__context__
    return None
