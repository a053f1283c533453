"""Admin-only JSON API: the audit log. Other users get 404, as for any object they may not see."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter
from sqlmodel import Session

from mldropd.audit import MAX_LIMIT, event_json, events
from mldropd.errors import NotFound
from mldropd.records import User

API = "/api/v1"


@get(
    f"{API}/audit",
    sync_to_thread=True,
    summary="Admin: the audit log, newest first (uploads, deletes, runs, admin actions)",
)
def audit_route(
    state: State,
    user: NamedDependency[User],
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    target: FromQuery[str | None] = None,
) -> list[dict[str, Any]]:
    if not user.is_admin:
        raise NotFound("audit log not found")
    with Session(state.daemon.engine) as s:
        rows = events(s, limit=limit, actor=actor, action=action, target=target)
        return [event_json(e) for e in rows]


ROUTES = [audit_route]
