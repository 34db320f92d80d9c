"""``/dashboard`` (a static page) and ``/api/v1/admin/stats`` (its data, administrators only).

The page itself holds no data, so it is served to anyone; everything it
shows comes from the stats endpoint, which takes an administrator's key like
the other admin endpoints. Where keys are required, the page asks for one
and keeps it in the tab's session storage. The page loads only its own
script and style sheet (a strict Content-Security-Policy, no inline code).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from litestar import Controller, Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery

from memory.accounts import Caller
from server.auth import resolve_admin
from server.dashboard.recorder import StatsReport

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("server.dashboard").joinpath("static", name).read_bytes()


def _serve(name: str) -> Response[bytes]:
    return Response(_asset(name), media_type=_MEDIA_TYPES[name], headers=_HEADERS)


class DashboardController(Controller):
    path = "/dashboard"
    include_in_schema = False

    @get("/")
    async def page(self) -> Response[bytes]:
        return _serve("index.html")

    @get("/dashboard.js")
    async def script(self) -> Response[bytes]:
        return _serve("dashboard.js")

    @get("/dashboard.css")
    async def style(self) -> Response[bytes]:
        return _serve("dashboard.css")


class StatsController(Controller):
    path = "/api/v1/admin/stats"
    tags = ["admin"]
    opt = {"rate_limit": "admin"}
    dependencies = {"admin": Provide(resolve_admin)}

    @get("/", cache=False)
    async def stats(
        self, state: State, admin: NamedDependency[Caller], since: FromQuery[float | None] = None
    ) -> StatsReport:
        """Chart points of throughput, latency, KV cache, GPU and queue (after ``since``)."""
        report: StatsReport = await state.stats.report(since)
        return report
