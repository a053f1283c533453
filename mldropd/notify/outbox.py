"""The outbox: messages are stored first, then sent by SMTP or kept as .eml files, with retries."""

from __future__ import annotations

import datetime as dt
import email.policy
import logging
import os
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from pathlib import Path

import sqlalchemy
import sqlmodel
from sqlmodel import select

from mldropd.db import session_scope
from mldropd.notify import smtp
from mldropd.records import OutboxMessage, utcnow
from mldropd.settings import EmailSettings
from mldropd.states import OutboxStatus

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 10
BACKOFF_BASE = dt.timedelta(seconds=60)
BACKOFF_MAX = dt.timedelta(hours=1)
# A claimed row is invisible to other deliverers this long; covers a slow send, and a crashed
# deliverer's row comes back by itself afterwards.
CLAIM_LEASE = dt.timedelta(minutes=10)


@dataclass
class DeliveryStats:
    """What one deliver_pending() call did: pending counts messages left waiting for a retry."""

    sent: int = 0
    kept: int = 0
    failed: int = 0
    pending: int = 0


def _one_line(value: str) -> str:
    # Header values must not carry line breaks (header injection, unparseable messages).
    return " ".join(value.split())


def enqueue(
    session: sqlmodel.Session, to: str, subject: str, text: str, html: str = ""
) -> OutboxMessage:
    """Add a pending message to the outbox (the caller commits)."""
    address = to.strip()
    if not address or "\n" in address or "\r" in address:
        raise ValueError(f"not a usable recipient address: {to!r}")
    now = utcnow()
    row = OutboxMessage(
        to=address,
        subject=_one_line(subject),
        body_text=text,
        body_html=html,
        created_at=now,
        next_attempt_at=now,
    )
    session.add(row)
    session.flush()  # gives the caller the id for its logs
    log.info("message queued", extra={"outbox_id": row.id, "to": address, "subject": row.subject})
    return row


def backoff(attempts: int) -> dt.timedelta:
    """Wait before the next try after `attempts` failed ones: 60 s doubling, at most 1 h."""
    return min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX)


def _message_id(row: OutboxMessage, sender: str) -> str:
    # Stable per row, so a retried message is recognisable as the same one by receivers.
    domain = parseaddr(sender)[1].rpartition("@")[2] or "localhost"
    return f"<mldropd.{row.id}.{row.created_at:%Y%m%d%H%M%S}@{domain}>"


def build_message(row: OutboxMessage, sender: str) -> EmailMessage:
    """The RFC 5322 message of an outbox row: text part, plus an HTML alternative when present."""
    message = EmailMessage(policy=email.policy.default)
    message["From"] = sender
    message["To"] = row.to
    message["Subject"] = row.subject
    message["Date"] = format_datetime(row.created_at)
    message["Message-ID"] = _message_id(row, sender)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies
    message.set_content(row.body_text)
    if row.body_html:
        message.add_alternative(row.body_html, subtype="html")
    return message


def eml_name(row: OutboxMessage) -> str:
    """File name of a row kept in the outbox folder."""
    return f"{row.created_at:%Y%m%dT%H%M%S}-{row.id:06d}.eml"


def write_eml(message: EmailMessage, folder: Path, name: str) -> Path:
    """Write the message into the folder atomically (temp file, fsync, rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(message.as_bytes(policy=email.policy.SMTP))  # CRLF, as on the wire
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _claim(engine: sqlalchemy.Engine, row_id: int, now: dt.datetime) -> OutboxMessage | None:
    """Take a due row for this deliverer (daemon and batch job may both deliver), or None."""
    table = OutboxMessage.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        claimed = conn.execute(
            sqlalchemy.update(table)
            .where(table.c.id == row_id, table.c.status == OutboxStatus.PENDING)
            .where(table.c.next_attempt_at <= now)
            .values(next_attempt_at=now + CLAIM_LEASE)
        ).rowcount
    if claimed != 1:
        return None
    with sqlmodel.Session(engine, expire_on_commit=False) as session:
        row = session.get(OutboxMessage, row_id)
        if row is not None:
            session.expunge(row)
        return row


def _record(engine: sqlalchemy.Engine, row_id: int, **values: object) -> OutboxMessage:
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, row_id)
        assert row is not None, row_id  # rows are never deleted while claimed
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)
    return row


def _deliver_one(
    engine: sqlalchemy.Engine,
    settings: EmailSettings,
    row: OutboxMessage,
    now: dt.datetime,
    stats: DeliveryStats,
) -> None:
    assert row.id is not None
    fields = {"outbox_id": row.id, "to": row.to, "subject": row.subject}
    path: Path | None = None
    try:
        message = build_message(row, settings.sender)
        if settings.smtp_host:
            smtp.send(message, settings)
        else:
            path = write_eml(message, Path(settings.outbox), eml_name(row))
    except Exception as exc:  # every cause becomes a retry; nothing escapes to the caller
        _failed(engine, row, now, _plain_error(exc, settings), stats)
        return
    if settings.smtp_host:
        _record(engine, row.id, status=OutboxStatus.SENT, sent_at=now)
        stats.sent += 1
        log.info("message sent", extra={**fields, "smtp_server": smtp.server_name(settings)})
    else:
        _record(engine, row.id, status=OutboxStatus.KEPT, path=str(path))
        stats.kept += 1
        log.info("message kept in the outbox folder", extra={**fields, "path": str(path)})


def _plain_error(exc: Exception, settings: EmailSettings) -> str:
    if isinstance(exc, smtp.SmtpError):
        return str(exc)
    if isinstance(exc, OSError) and not settings.smtp_host:
        return f"cannot write to the outbox folder {settings.outbox}: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


def _failed(
    engine: sqlalchemy.Engine,
    row: OutboxMessage,
    now: dt.datetime,
    error: str,
    stats: DeliveryStats,
) -> None:
    assert row.id is not None
    attempts = row.attempts + 1
    fields = {"outbox_id": row.id, "to": row.to, "attempts": attempts, "error": error}
    if attempts >= MAX_ATTEMPTS:
        _record(engine, row.id, status=OutboxStatus.FAILED, attempts=attempts, last_error=error)
        stats.failed += 1
        log.error(f"message given up after {attempts} attempts: {error}", extra=fields)
        return
    retry_at = now + backoff(attempts)
    _record(engine, row.id, attempts=attempts, last_error=error, next_attempt_at=retry_at)
    stats.pending += 1
    log.warning(
        f"message not delivered, retry at {retry_at:%Y-%m-%d %H:%M:%S} UTC: {error}",
        extra={**fields, "next_attempt_at": retry_at.isoformat()},
    )


def deliver_pending(
    engine: sqlalchemy.Engine,
    settings: EmailSettings,
    *,
    now: dt.datetime | None = None,
    limit: int = 100,
) -> DeliveryStats:
    """Send (or keep as .eml) the due pending messages, each in its own transaction; never raises
    for delivery failures."""
    now = now or utcnow()
    stats = DeliveryStats()
    with sqlmodel.Session(engine) as session:
        due = session.exec(
            select(OutboxMessage.id)
            .where(
                OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.next_attempt_at <= now
            )
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)  # type: ignore[arg-type]
            .limit(limit)
        ).all()
    for row_id in due:
        assert row_id is not None
        row = _claim(engine, row_id, now)
        if row is None:
            continue  # another deliverer took it meanwhile
        _deliver_one(engine, settings, row, now, stats)
    return stats


def next_due(engine: sqlalchemy.Engine) -> dt.datetime | None:
    """When the earliest pending message is due (aware UTC), or None: lets a caller sleep."""
    with sqlmodel.Session(engine) as session:
        due = session.exec(
            select(sqlalchemy.func.min(OutboxMessage.next_attempt_at)).where(
                OutboxMessage.status == OutboxStatus.PENDING
            )
        ).one()
    return due
