"""Admin-only JSON API: per-user quotas, the outbox and the audit log. Other users get 404, as
for any object they may not see (services.users checks it)."""

from __future__ import annotations

from typing import Annotated

from litestar import get, patch
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from mldropd.audit import MAX_LIMIT
from mldropd.records import User
from mldropd.services import UserService
from mldropd.services.schemas import AuditEventOut, OutboxOut, QuotaChange, UserOut
from mldropd.states import OutboxStatus

API = "/api/v1"
Users = NamedDependency[UserService]


@patch(
    f"{API}/users/{{email:str}}",
    sync_to_thread=True,
    summary='Admin: set a user\'s quota of active models, {"quota": N} (null: the default)',
)
def patch_user_route(
    user: NamedDependency[User], users: Users, email: FromPath[str], data: JSONBody[QuotaChange]
) -> UserOut:
    return users.set_quota(user, email, data.quota)


@get(
    f"{API}/outbox",
    sync_to_thread=True,
    summary="Admin: messages waiting in the outbox (pending) and given up (failed)",
)
def outbox_route(
    user: NamedDependency[User],
    users: Users,
    status: FromQuery[OutboxStatus | None] = None,
    limit: FromQuery[int] = 200,
) -> list[OutboxOut]:
    return users.outbox(user, status, limit)


@get(
    f"{API}/audit",
    sync_to_thread=True,
    summary="Admin: the audit log, newest first (uploads, deletes, runs, admin actions)",
)
def audit_route(
    user: NamedDependency[User],
    users: Users,
    limit: Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT)] = 100,
    actor: FromQuery[str | None] = None,
    action: FromQuery[str | None] = None,
    target: FromQuery[str | None] = None,
) -> list[AuditEventOut]:
    return users.audit(user, limit=limit, actor=actor, action=action, target=target)


ROUTES = [patch_user_route, outbox_route, audit_route]
