"""The DQ dashboard: every model the user may see, its DQ status and a PSI sparkline."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.response import Template
from sqlmodel import Session

from mldropd.daemon import Daemon
from mldropd.pages.context import alerts, dashboard_counts, dashboard_rows
from mldropd.pages.web import page_or_partial
from mldropd.records import User

SORTS = {"status": "worst status first", "name": "name", "psi": "highest PSI first"}


@get("/dashboard", sync_to_thread=True)
def dashboard_page(
    request: Request[Any, Any, Any],
    state: State,
    user: User,
    sort: str = "status",
    only: str | None = None,
) -> Template:
    daemon: Daemon = state.daemon
    sort = sort if sort in SORTS else "status"
    with Session(daemon.engine) as s:
        rows = dashboard_rows(s, user, daemon.settings, daemon.now(), sort=sort)
    shown = alerts(rows) if only == "alerts" else rows
    context = {
        "user": user,
        "page": "dashboard",
        "rows": shown,
        "total": len(rows),
        "counts": dashboard_counts(rows),
        "sort": sort,
        "sorts": SORTS,
        "only": only == "alerts",
    }
    return page_or_partial(request, "dashboard.html", "_dashboard_table.html", context)


ROUTES = [dashboard_page]
