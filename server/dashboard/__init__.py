"""The live dashboard: a page at ``/dashboard`` fed by ``/api/v1/admin/stats``.

`StatsRecorder` keeps a short in-memory history of the service's own metrics;
`DashboardController` serves the page (static HTML, a hand-written SVG chart
script and a style sheet, shipped as package data); `StatsController` answers
the page's polls, administrators only. See docs/operations.md.
"""

from server.dashboard.recorder import StatsRecorder, StatsReport
from server.dashboard.routes import DashboardController, StatsController

__all__ = ["DashboardController", "StatsController", "StatsRecorder", "StatsReport"]
