"""The DQ dashboard: every model the user may see, its DQ status and a PSI sparkline."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from mldropd.pages.context import dashboard, page_number
from mldropd.pages.web import page_or_partial
from mldropd.records import User
from mldropd.services import ModelService

SORTS = {"status": "worst status first", "name": "name", "psi": "highest PSI first"}


@get("/dashboard", sync_to_thread=True)
def dashboard_page(
    request: Request[Any, Any, Any],
    state: State,
    user: NamedDependency[User],
    models: NamedDependency[ModelService],
    sort: FromQuery[str] = "status",
    only: FromQuery[str | None] = None,
    page: FromQuery[str | None] = None,
) -> Template:
    sort = sort if sort in SORTS else "status"
    board = dashboard(
        models,
        user,
        state.settings,
        sort=sort,
        only_alerts=only == "alerts",
        page=page_number(page),
    )
    context = {
        "user": user,
        "page": "dashboard",
        "rows": board.rows,
        "pager": board.pager,
        "total": sum(board.counts.values()),
        "counts": board.counts,
        "sort": sort,
        "sorts": SORTS,
        "only": only == "alerts",
        "busy": any(r["active_run"] for r in board.rows),  # refresh while a row is running
    }
    return page_or_partial(request, "dashboard.html", "_dashboard_table.html", context)


ROUTES = [dashboard_page]
