"""Reports, the outbox and SMTP delivery, against a real (aiosmtpd) SMTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import logging
import re
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from aiosmtpd.smtp import AuthResult, LoginPassword

from mldropd.db import init_db, make_engine, session_scope
from mldropd.notify import outbox, smtp
from mldropd.notify.outbox import DeliveryStats, deliver_pending, enqueue
from mldropd.notify.reports import ReportItem, build_report
from mldropd.records import OutboxMessage, utcnow
from mldropd.settings import EmailSettings
from tests.support.smtp import SmtpServer
from tests.support.wait import free_port

BASE = "http://mldropd.example:8080"
DAY = dt.date(2026, 11, 27)
OWNER = "alice@example.com"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sqlalchemy.Engine]:
    eng = make_engine(tmp_path / "db.sqlite")
    init_db(eng)
    yield eng
    eng.dispose()


def _item(**overrides: Any) -> ReportItem:
    values: dict[str, Any] = {
        "model_id": 12,
        "model_name": "churn_lgbm",
        "model_version": 3,
        "date": DAY,
        "status": "succeeded",
        "attempt": 1,
        "max_attempts": 3,
        "rows": 1_234_567,
        "seconds": 12.34,
        "error": None,
        "retry_at": None,
        "dq": {
            "status": "ok",
            "reason": "",
            "psi": 0.0123,
            "psi_noise": 0.0041,
            "auc": 0.512,
            "ks": 0.031,
            "reference_date": dt.date(2026, 11, 26),
        },
    }
    return ReportItem(**{**values, **overrides})


FAILED = {
    "status": "failed",
    "rows": None,
    "seconds": 3.2,
    "dq": None,
    "error": 'The model raised ValueError while scoring.\n  File "model.py", line 3\n'
    "ValueError: input contains NaN & <inf>",
}


def _row(engine: sqlalchemy.Engine, row_id: int) -> OutboxMessage:
    with session_scope(engine) as session:
        row = session.get(OutboxMessage, row_id)
        assert row is not None
        return row


def _enqueue_report(engine: sqlalchemy.Engine, items: list[ReportItem]) -> int:
    subject, text, html = build_report(OWNER, items, BASE)
    with session_scope(engine) as session:
        row = enqueue(session, OWNER, subject, text, html)
        assert row.id is not None
        return row.id


def _parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def test_report_succeeded_has_every_figure() -> None:
    subject, text, html = build_report(OWNER, [_item()], BASE)
    assert subject == "mldropd: churn_lgbm scored 2026-11-27 — ok"
    for fragment in [
        "churn_lgbm (v3)",
        "2026-11-27",
        "succeeded (attempt 1 of 3)",
        "1,234,567",
        "12 s",
        "ok — PSI 0.012 (noise level 0.004), AUC 0.512, KS 0.031, compared with 2026-11-26",
        f"{BASE}/models/12",
    ]:
        assert fragment in text
        assert fragment in html
    assert "retry" not in text.lower()
    assert "<table" in html and "http://" not in html.replace(BASE, "")  # no external assets


def test_report_failed_with_retry_says_when() -> None:
    item = _item(**FAILED, retry_at=dt.datetime(2026, 11, 27, 6, 30))
    subject, text, html = build_report(OWNER, [item], BASE)
    assert subject == "mldropd: churn_lgbm scored 2026-11-27 — failed, retry scheduled"
    assert "failed (attempt 1 of 3)" in text
    assert "The model raised ValueError while scoring." in text
    assert "    ValueError: input contains NaN & <inf>" in text  # indented, verbatim
    assert "A retry is scheduled at 2026-11-27 06:30 UTC." in text
    assert "No more retries" not in text
    assert "ValueError: input contains NaN &amp; &lt;inf&gt;" in html  # escaped
    assert "<inf>" not in html
    assert "A retry is scheduled at 2026-11-27 06:30 UTC." in html
    assert "DQ:" not in text


def test_report_final_failure_says_no_more_retries() -> None:
    item = _item(**FAILED, attempt=3)
    subject, text, html = build_report(OWNER, [item], BASE)
    assert subject == "mldropd: churn_lgbm scored 2026-11-27 — failed, no more retries"
    assert "failed (attempt 3 of 3)" in text
    assert "No more retries: fix the model and upload a new version." in text
    assert "No more retries: fix the model and upload a new version." in html


def test_report_recovered() -> None:
    subject, text, _ = build_report(OWNER, [_item(attempt=2, recovered=True)], BASE)
    assert subject == "mldropd: churn_lgbm scored 2026-11-27 — ok after a retry"
    assert "succeeded on attempt 2 of 3, after an earlier failure" in text


def test_report_dq_alert() -> None:
    dq = {
        "status": "alert",
        "reason": "score distribution shifted: PSI 0.41 >= 0.25",
        "psi": 0.41,
        "psi_noise": 0.004,
        "auc": 0.83,
        "ks": 0.27,
        "reference_date": "2026-11-26",
    }
    subject, text, html = build_report(OWNER, [_item(dq=dq)], BASE)
    assert subject == "mldropd: churn_lgbm scored 2026-11-27 — DQ alert"
    assert "alert — PSI 0.410 (noise level 0.004), AUC 0.830, KS 0.270" in text
    assert "score distribution shifted: PSI 0.41 &gt;= 0.25" in html
    assert "score distribution shifted: PSI 0.41 >= 0.25" in text


def test_report_several_models_problems_first() -> None:
    items = [
        _item(),
        _item(
            model_id=7,
            model_name="fraud_xgb",
            model_version=1,
            **FAILED,
            retry_at=dt.datetime(2026, 11, 27, 6, 30, tzinfo=dt.UTC),
        ),
    ]
    subject, text, html = build_report(OWNER, items, BASE)
    assert subject == "mldropd: 2 models scored 2026-11-27 — 1 failed"
    assert "2 models: 1 succeeded, 1 failed." in text
    assert text.index("fraud_xgb (v1)") < text.index("churn_lgbm (v3)")
    assert f"{BASE}/models/7" in text and f"{BASE}/models/12" in text
    assert "2026-11-27 06:30 UTC" in text
    assert html.count("<tr>") == 4  # header, two models, the failure's note


def test_report_subject_counts_dq_and_skips() -> None:
    warn = {"status": "warn", "psi": 0.15, "psi_noise": 0.01, "auc": None, "ks": None}
    items = [
        _item(dq={"status": "alert", "psi": 0.5}),
        _item(model_id=2, model_name="b", dq={"status": "alert", "psi": 0.6}),
        _item(model_id=3, model_name="c", dq=warn),
        _item(
            model_id=4,
            model_name="d",
            status="skipped",
            rows=None,
            seconds=None,
            dq=None,
            error="No feature slice for 2026-11-27 within 3 days.",
        ),
    ]
    subject, text, _ = build_report(OWNER, items, BASE)
    assert subject == "mldropd: 4 models scored 2026-11-27 — 1 skipped, 2 DQ alerts, DQ warning"
    assert "Reason:\n    No feature slice" in text
    assert "warn — PSI 0.150 (noise level 0.010)" in text
    with pytest.raises(ValueError):
        build_report(OWNER, [], BASE)


def test_deliver_to_outbox_folder(engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    settings = EmailSettings(
        smtp_host="", sender="reports@mldropd.example", outbox=str(tmp_path / "outbox")
    )
    row_id = _enqueue_report(engine, [_item()])

    stats = deliver_pending(engine, settings)

    assert stats == DeliveryStats(kept=1)
    row = _row(engine, row_id)
    assert row.status == "kept" and row.path is not None
    path = Path(row.path)
    assert path.parent == tmp_path / "outbox"
    assert path.name == f"{row.created_at:%Y%m%dT%H%M%S}-{row_id:06d}.eml"
    assert re.fullmatch(r"\d{8}T\d{6}-\d{6}\.eml", path.name)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert message["From"] == "reports@mldropd.example"
    assert message["To"] == OWNER
    assert message["Subject"] == "mldropd: churn_lgbm scored 2026-11-27 — ok"
    assert message["Date"] and message["Message-ID"].endswith("@mldropd.example>")
    text, html = _parts(message)
    assert "1,234,567" in text and "1,234,567" in html
    assert deliver_pending(engine, settings) == DeliveryStats()  # kept once


def test_outbox_folder_unwritable_stays_pending(engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    blocker = tmp_path / "outbox"
    blocker.write_text("a file where the folder should be")
    settings = EmailSettings(smtp_host="", outbox=str(blocker))
    row_id = _enqueue_report(engine, [_item()])

    assert deliver_pending(engine, settings) == DeliveryStats(pending=1)
    row = _row(engine, row_id)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error is not None
    assert row.last_error.startswith(f"cannot write to the outbox folder {blocker}")


def test_enqueue_refuses_header_injection(engine: sqlalchemy.Engine) -> None:
    with session_scope(engine) as session:
        with pytest.raises(ValueError):
            enqueue(session, "a@example.com\r\nBcc: b@example.com", "s", "t")
        row = enqueue(session, " a@example.com ", "two\nlines", "t")
    assert (row.to, row.subject) == ("a@example.com", "two lines")


def test_deliver_via_smtp(
    engine: sqlalchemy.Engine, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    items = [_item(), _item(model_id=7, model_name="fraud_xgb", **FAILED, attempt=3)]
    row_id = _enqueue_report(engine, items)

    stats = deliver_pending(engine, smtp_server.settings(tmp_path))

    assert stats == DeliveryStats(sent=1)
    row = _row(engine, row_id)
    assert row.status == "sent" and row.sent_at is not None and row.attempts == 0
    [envelope] = smtp_server.inbox.envelopes
    assert envelope.rcpt_tos == [OWNER]
    assert envelope.mail_from == "reports@mldropd.example"
    [message] = smtp_server.inbox.messages()
    assert message["Subject"] == "mldropd: 2 models scored 2026-11-27 — 1 failed"
    assert message["To"] == OWNER
    text, html = _parts(message)
    for fragment in [
        "churn_lgbm (v3)",
        "fraud_xgb (v3)",
        "1,234,567",
        "PSI 0.012",
        "No more retries: fix the model and upload a new version.",
        f"{BASE}/models/7",
    ]:
        assert fragment in text
        assert fragment in html
    assert not (tmp_path / "outbox").exists()  # SMTP mode writes no files


def test_outage_waits_then_sends_once(
    engine: sqlalchemy.Engine,
    smtp_server: SmtpServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = smtp_server.settings(tmp_path)
    smtp_server.stop()
    row_id = _enqueue_report(engine, [_item()])
    t0 = utcnow()

    with caplog.at_level(logging.WARNING, logger="mldropd.notify.outbox"):
        assert deliver_pending(engine, settings, now=t0) == DeliveryStats(pending=1)
    row = _row(engine, row_id)
    assert row.status == "pending" and row.attempts == 1
    assert row.last_error is not None
    assert row.last_error.startswith(f"SMTP server 127.0.0.1:{smtp_server.port} unreachable:")
    assert row.next_attempt_at == t0 + dt.timedelta(seconds=60)
    assert any(r.__dict__.get("outbox_id") == row_id for r in caplog.records)
    # Not due yet: nothing is tried.
    assert deliver_pending(engine, settings, now=t0 + dt.timedelta(seconds=30)) == DeliveryStats()

    smtp_server.start()
    later = t0 + dt.timedelta(seconds=61)
    assert deliver_pending(engine, settings, now=later) == DeliveryStats(sent=1)
    assert deliver_pending(engine, settings, now=later + dt.timedelta(hours=2)) == DeliveryStats()
    assert len(smtp_server.inbox.envelopes) == 1
    row = _row(engine, row_id)
    assert row.status == "sent" and row.sent_at is not None and row.sent_at == later


def test_gives_up_after_ten_attempts(engine: sqlalchemy.Engine, tmp_path: Path) -> None:
    settings = EmailSettings(smtp_host="127.0.0.1", smtp_port=free_port(), starttls=False)
    row_id = _enqueue_report(engine, [_item()])
    now, waits = utcnow(), []
    for attempt in range(1, 11):
        stats = deliver_pending(engine, settings, now=now)
        row = _row(engine, row_id)
        assert row.attempts == attempt
        if attempt < 10:
            assert stats == DeliveryStats(pending=1)
            waits.append((row.next_attempt_at - now).total_seconds())
            now = row.next_attempt_at
    assert stats == DeliveryStats(failed=1)
    assert row.status == "failed"
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert deliver_pending(engine, settings, now=now + dt.timedelta(days=1)) == DeliveryStats()


def test_claimed_row_is_not_delivered_twice(
    engine: sqlalchemy.Engine, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    row_id = _enqueue_report(engine, [_item()])
    now = utcnow()
    assert outbox._claim(engine, row_id, now) is not None  # another deliverer holds it
    assert outbox._claim(engine, row_id, now) is None
    assert deliver_pending(engine, smtp_server.settings(tmp_path), now=now) == DeliveryStats()
    assert smtp_server.inbox.envelopes == []
    assert outbox.next_due(engine) == now + outbox.CLAIM_LEASE


def _message() -> EmailMessage:
    row = OutboxMessage(id=1, to=OWNER, subject="hello", body_text="hi", created_at=utcnow())
    return outbox.build_message(row, "reports@mldropd.example")


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_login_with_password_file(tmp_path: Path) -> None:
    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            b"mailer",
            b"s3cret",
        )
        return AuthResult(success=ok, handled=False)

    srv = SmtpServer(authenticator=authenticator, auth_require_tls=False, auth_required=True)
    srv.start()
    try:
        secret = tmp_path / "smtp.pw"
        secret.write_text("s3cret\n")
        smtp.send(_message(), srv.settings(tmp_path, username="mailer", password_file=str(secret)))
        assert len(srv.inbox.envelopes) == 1

        secret.write_text("wrong")
        with pytest.raises(smtp.SmtpError, match=rf"127\.0\.0\.1:{srv.port} rejected the login"):
            smtp.send(
                _message(), srv.settings(tmp_path, username="mailer", password_file=str(secret))
            )
        with pytest.raises(smtp.SmtpError, match="cannot read the SMTP password file"):
            smtp.send(
                _message(),
                srv.settings(tmp_path, username="mailer", password_file=str(tmp_path / "missing")),
            )
        assert len(srv.inbox.envelopes) == 1
    finally:
        srv.stop()


def test_starttls_required_but_not_offered(smtp_server: SmtpServer, tmp_path: Path) -> None:
    with pytest.raises(smtp.SmtpError, match=r"does not offer STARTTLS.*starttls = false"):
        smtp.send(_message(), smtp_server.settings(tmp_path, starttls=True))
    assert smtp_server.inbox.envelopes == []
