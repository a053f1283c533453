"""UserService: who is asking (API token, web session, trusted proxy), and what admins see and
change of users: quotas, the outbox of report e-mails, the audit log.

Account changes of the command line (`mldropd users add | disable | rotate-token ...`) are
mldropd.auth's: one transaction each, with its audit row. Admin-only things answer any other
user as if they did not exist (404).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mldropd.audit import events
from mldropd.auth import user_for_token
from mldropd.records import AuditEvent, Model, OutboxMessage, User
from mldropd.registry import quota_of, set_quota
from mldropd.services.access import Caller, require_admin
from mldropd.services.schemas import AuditEventOut, OutboxOut, UserOut
from mldropd.settings import Settings
from mldropd.states import ModelStatus, OutboxStatus

MAX_LIST = 1000


class UserService:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine, self.settings = engine, settings

    # -- who is asking -------------------------------------------------------------------------
    def by_token(self, token: str) -> User | None:
        """The enabled user holding this API token."""
        with Session(self.engine) as s:
            return user_for_token(s, token.strip())

    def signed_in(self, user_id: Any, token_hash: Any) -> User | None:
        """The user of a web session, while it is enabled and its token unchanged (rotating the
        token ends every session)."""
        if user_id is None:
            return None
        with Session(self.engine) as s:
            user = s.get(User, user_id)
        ok = user is not None and not user.disabled and user.token_hash == token_hash
        return user if ok else None

    def by_email(self, email: str) -> User | None:
        """The enabled user of this address (a trusted proxy's sign-in)."""
        with Session(self.engine) as s:
            user = s.exec(select(User).where(User.email == email.strip().lower())).first()
        return user if user is not None and not user.disabled else None

    # -- admins --------------------------------------------------------------------------------
    def set_quota(self, caller: Caller, email: str, quota: int | None) -> UserOut:
        """Set a user's quota of active models (None: back to the default); audited."""
        require_admin(caller, f"user {email}")
        user, active = set_quota(self.engine, self.settings, email, quota, actor=caller.email)
        return self.user_json(user, active)

    def user_json(self, user: User, active: list[str]) -> UserOut:
        return {
            "email": user.email,
            "is_admin": user.is_admin,
            "disabled": user.disabled,
            "quota": quota_of(user, self.settings),
            "quota_source": "user" if user.quota is not None else "default",
            "active_models": active,
        }

    def rows(self, caller: Caller) -> list[tuple[User, int]]:
        """Every user, oldest first, with its count of active models."""
        require_admin(caller, "users")
        with Session(self.engine) as s:
            active = dict(
                s.exec(
                    select(Model.owner_id, func.count())
                    .where(Model.status == ModelStatus.ACTIVE)
                    .group_by(col(Model.owner_id))
                ).all()
            )
            users = s.exec(select(User).order_by(col(User.created_at), col(User.id))).all()
            return [(u, active.get(u.id or 0, 0)) for u in users]

    def outbox(
        self, caller: Caller, status: OutboxStatus | None = None, limit: int = 200
    ) -> list[OutboxOut]:
        """Messages of one status, oldest first; by default the pending and the failed ones."""
        require_admin(caller, "outbox")
        wanted = [OutboxStatus.PENDING, OutboxStatus.FAILED] if status is None else [status]
        with Session(self.engine) as s:
            rows = s.exec(
                select(OutboxMessage)
                .where(col(OutboxMessage.status).in_(wanted))
                .order_by(col(OutboxMessage.id))
                .limit(max(1, min(limit, MAX_LIST)))
            )
            return [outbox_json(r) for r in rows]

    def audit(
        self,
        caller: Caller,
        *,
        limit: int = 100,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
    ) -> list[AuditEventOut]:
        """The audit log, newest first, optionally one actor's, action's or target's."""
        require_admin(caller, "audit log")
        with Session(self.engine) as s:
            rows = events(s, limit=limit, actor=actor, action=action, target=target)
            return [event_json(e) for e in rows]


def outbox_json(row: OutboxMessage) -> OutboxOut:
    pending = row.status == OutboxStatus.PENDING
    return {
        "id": row.id or 0,
        "to": row.to,
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_attempt_at": row.next_attempt_at.isoformat() if pending else None,
        "created_at": row.created_at.isoformat(),
        "sent_at": row.sent_at.isoformat() if row.sent_at else None,
    }


def event_json(event: AuditEvent) -> AuditEventOut:
    """An event as the API and `mldropd audit --json` show it."""
    return {
        "id": event.id or 0,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "detail": event.detail,
    }
