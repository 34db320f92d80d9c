"""The Litestar application factory.

``create_app()`` reads the settings from the environment (the path taken by
``companion serve`` workers); tests and embedders pass a `Settings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar
from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.config.compression import CompressionConfig
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import ControllerRouterHandler

from server.accounts_api import AccountsController
from server.admin import AdminController, ModelsAdminController
from server.body_errors import check_body
from server.conversations_api import ConversationsController
from server.dashboard import DashboardController, StatsController, StatsRecorder
from server.errors import exception_handlers
from server.health import HealthController
from server.idempotency import IdempotencyStore
from server.logs import RequestContext, configure_logging
from server.memories_api import MemoriesController
from server.openai_api.routes import OpenAIController
from server.profile_api import ProfileController
from server.resources import open_resources
from server.settings import Settings, host_patterns, load_settings
from server.sse import UNCOMPRESSED
from server.status_api import StatusController
from server.turn.responder import TurnResponder
from server.web_ui import web_ui

GZIP_MINIMUM_BYTES = 1024
# Request duration buckets (seconds): the client library's defaults, plus long ones,
# since a streamed reply is timed to its last byte.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def create_app(
    settings: Settings | None = None,
    *,
    extra_route_handlers: Sequence[ControllerRouterHandler] = (),
) -> Litestar:
    """Build the app; its lifespan opens and closes every resource."""
    settings = settings or load_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_resources(settings) as resources, StatsRecorder().running() as stats:
            app.state.resources = resources
            app.state.stats = stats
            app.state.responder = TurnResponder(
                IdempotencyStore(resources.redis, settings.idempotency_ttl_s),
                settings.sse_keepalive_s,
            )
            yield

    metrics = PrometheusConfig(
        app_name="companion", prefix="companion", group_path=True, buckets=list(HTTP_BUCKETS)
    )
    app = Litestar(
        route_handlers=[
            HealthController,
            PrometheusController,
            OpenAIController,
            AdminController,
            ModelsAdminController,
            AccountsController,
            ConversationsController,
            MemoriesController,
            ProfileController,
            DashboardController,
            StatsController,
            StatusController,
            web_ui(),
            *extra_route_handlers,
        ],
        lifespan=[lifespan],
        middleware=[metrics.middleware],
        exception_handlers=exception_handlers,
        before_request=check_body,
        compression_config=CompressionConfig(
            backend="gzip", minimum_size=GZIP_MINIMUM_BYTES, exclude_opt_key=UNCOMPRESSED
        ),
        cors_config=_cors(settings),
        # refuses Host headers this server does not serve (DNS rebinding to loopback)
        allowed_hosts=AllowedHostsConfig(allowed_hosts=host_patterns(settings)),
        request_max_body_size=settings.max_body_bytes,
        state=State({"settings": settings}),
        logging_config=None,
        debug=False,
    )
    # Outermost, as Litestar itself wraps CORS: it must see requests that match no route.
    app.asgi_handler = RequestContext(app.asgi_handler)
    return app


def _cors(settings: Settings) -> CORSConfig | None:
    if not settings.cors_origins:
        return None
    origins: Any = list(settings.cors_origins)
    return CORSConfig(allow_origins=origins, allow_credentials="*" not in origins)
