"""The audit log: who did what to which object, and when.

`record` adds the event to the caller's database session, so it commits (or rolls back) with
the change it describes. Actors are users' emails, or `cli:<os user>` for the command line.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
from typing import Any

from sqlmodel import Session, col, select

from mldropd.records import AuditEvent, Model
from mldropd.states import ModelStatus

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


def cli_actor() -> str:
    """The actor of a command-line action: the operating-system user who ran it."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name (a container without /etc/passwd entry)
        return "cli"


def _plain(value: Any) -> Any:
    """Detail values as JSON: dates as ISO text, sets and tuples as sorted lists."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(_plain(v) for v in value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def record(session: Session, actor: str, action: str, target: str, **detail: Any) -> AuditEvent:
    """Add one audit event to session (committed with the caller's change).

    An empty actor is the command line: recorded as `cli:<os user>`.
    """
    actor = actor or cli_actor()
    event = AuditEvent(actor=actor, action=action, target=target, detail=_plain(detail))
    session.add(event)
    # One grep-able line per event for the operator, next to the rest of the daemon's log; the
    # JSON format carries the whole detail (user-chosen text such as file names stays inside
    # the JSON string, never in the text line).
    log.info("audit: %s %s %s", actor, action, target, extra={"user": actor, "audit": event.detail})
    return event


def record_model_change(
    session: Session, actor: str, model: Model, changes: dict[str, Any]
) -> None:
    """Audit a model PATCH before it is applied: rollbacks, pauses and resumes are own events."""
    target = f"model:{model.id}"
    if "version" in changes:
        record(session, actor, "model.rollback", target, name=model.name, to_version=model.version)
    if "status" in changes and changes["status"] != model.status:
        action = "model.pause" if changes["status"] == ModelStatus.PAUSED else "model.resume"
        record(session, actor, action, target, name=model.name)
    rest = {k: changes[k] for k in ("schedule", "email", "dq") if k in changes}
    if rest:
        record(session, actor, "model.update", target, name=model.name, **rest)


def events(
    session: Session,
    *,
    limit: int = 100,
    actor: str | None = None,
    action: str | None = None,
    target: str | None = None,
) -> list[AuditEvent]:
    """The newest events first, optionally only one actor's, one action's or one target's."""
    query = select(AuditEvent).order_by(col(AuditEvent.id).desc())
    if actor:
        actor = actor.strip()
        query = query.where(AuditEvent.actor == (actor.lower() if "@" in actor else actor))
    if action:
        query = query.where(AuditEvent.action == action)
    if target:
        query = query.where(AuditEvent.target == target)
    return list(session.exec(query.limit(max(1, min(limit, MAX_LIMIT)))))
