"""Admin-only JSON API: the audit log. Other users get 404, as for any object they may not see."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Parameter
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
    limit: int = Parameter(default=100, ge=1, le=MAX_LIMIT),
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[dict[str, Any]]:
    if not user.is_admin:
        raise NotFound("audit log not found")
    with Session(state.daemon.engine) as s:
        rows = events(s, limit=limit, actor=actor, action=action, target=target)
        return [event_json(e) for e in rows]


ROUTES = [audit_route]
