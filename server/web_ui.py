"""The web chat UI: ``/`` serves the page, ``/ui/...`` its scripts, styles and icon.

The files live in ``server/web/`` and ship as package data: plain HTML, CSS
and ES modules, no build step and nothing fetched from elsewhere. Every
response of the UI carries a strict Content-Security-Policy (same origin
only, no inline script or style), so markup injected through a message could
neither run nor load anything. The page itself calls the JSON API under
``/api/v1`` with the user's access token (see docs/web-ui.md).

Only ``/`` and ``/ui/`` belong to the UI; every other unknown path still gets
the app's JSON 404.
"""

from __future__ import annotations

from pathlib import Path

from litestar import Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.response import File
from litestar.static_files import create_static_files_router

WEB_DIR = Path(__file__).with_name("web")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Revalidate on every load, so an upgraded server never runs with a stale script.
_REVALIDATE = CacheControlHeader(no_cache=True)


async def _secure(response: Response[object]) -> Response[object]:
    response.headers.update(SECURITY_HEADERS)
    return response


@get("/", include_in_schema=False, cache_control=_REVALIDATE, after_request=_secure)
async def index() -> File:
    """The single page of the UI."""
    return File(WEB_DIR / "index.html", content_disposition_type="inline", media_type="text/html")


def web_ui() -> Router:
    """The UI's routes: the page at ``/`` and its assets under ``/ui``."""
    assets = create_static_files_router(
        path="/ui",
        directories=[WEB_DIR],
        name="web-ui",
        cache_control=_REVALIDATE,
        after_request=_secure,
        include_in_schema=False,
    )
    return Router(path="/", route_handlers=[index, assets])
