"""Admin-only JSON API: per-user quotas and the outbox. Other users get 404, as for any object
they may not see."""

from __future__ import annotations

import datetime as dt
from typing import Any

from litestar import get, patch
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from sqlmodel import Session, col, select

from mldropd.daemon import Daemon
from mldropd.errors import FieldError, NotFound, ValidationFailed
from mldropd.records import OutboxMessage, User
from mldropd.registry import quota_of, set_quota
from mldropd.settings import Settings

API = "/api/v1"
OUTBOX_STATUSES = ("pending", "failed", "sent", "kept")


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat()


def _require_admin(user: User, what: str) -> None:
    if not user.is_admin:
        raise NotFound(f"{what} not found")


def user_json(user: User, settings: Settings, active: list[str]) -> dict[str, Any]:
    """A user as admins see it: quota in force, where it comes from, and the active models."""
    return {
        "email": user.email,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "quota": quota_of(user, settings),
        "quota_source": "user" if user.quota is not None else "default",
        "active_models": active,
    }


def outbox_json(row: OutboxMessage) -> dict[str, Any]:
    return {
        "id": row.id,
        "to": row.to,
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_attempt_at": _iso(row.next_attempt_at) if row.status == "pending" else None,
        "created_at": _iso(row.created_at),
        "sent_at": _iso(row.sent_at),
    }


@patch(
    f"{API}/users/{{email:str}}",
    sync_to_thread=True,
    summary='Admin: set a user\'s quota of active models, {"quota": N} (null: the default)',
)
def patch_user_route(
    state: State, user: NamedDependency[User], email: FromPath[str], data: JSONBody[dict[str, Any]]
) -> dict[str, Any]:
    _require_admin(user, f"user {email}")
    unknown = sorted(set(data) - {"quota"})
    if unknown or "quota" not in data:
        raise ValidationFailed(
            [FieldError(k, f'`{k}` cannot be changed; send {{"quota": N}}') for k in unknown]
            or [FieldError("quota", 'send {"quota": N} (a whole number, or null for the default)')]
        )
    daemon: Daemon = state.daemon
    changed, active = set_quota(
        daemon.engine, daemon.settings, email, data["quota"], actor=user.email
    )
    return user_json(changed, daemon.settings, active)


@get(
    f"{API}/outbox",
    sync_to_thread=True,
    summary="Admin: messages waiting in the outbox (pending) and given up (failed)",
)
def outbox_route(
    state: State,
    user: NamedDependency[User],
    status: FromQuery[str | None] = None,
    limit: FromQuery[int] = 200,
) -> list[dict[str, Any]]:
    _require_admin(user, "outbox")
    wanted = ["pending", "failed"] if status is None else [status]
    if status is not None and status not in OUTBOX_STATUSES:
        raise ValidationFailed(
            [FieldError("status", f"`status` must be one of {', '.join(OUTBOX_STATUSES)}")]
        )
    daemon: Daemon = state.daemon
    with Session(daemon.engine) as s:
        rows = s.exec(
            select(OutboxMessage)
            .where(col(OutboxMessage.status).in_(wanted))
            .order_by(col(OutboxMessage.id))
            .limit(max(1, min(limit, 1000)))
        )
        return [outbox_json(r) for r in rows]


ROUTES = [patch_user_route, outbox_route]
