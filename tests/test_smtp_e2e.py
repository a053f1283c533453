"""Report emails of real runs reach a real SMTP server (aiosmtpd on 127.0.0.1); while it is
down they wait in the outbox (shown by GET /api/v1/outbox) and go out once it is back."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlmodel import Session, select

from mldropd.notify import outbox
from mldropd.records import OutboxMessage
from mldropd.settings import Settings, load_settings
from tests.support.home import today
from tests.support.http import bearer, upload, wait_run
from tests.support.models import write_small_model
from tests.support.smtp import SmtpServer
from tests.support.wait import wait_for

BASE = "http://mldropd.test:8080"
REPORTS = "ann.reports@example.com"
EMAIL = """
[email]
smtp_host = "127.0.0.1"
smtp_port = {port}
starttls = false
sender = "mldropd <reports@mldropd.example>"
"""


@pytest.fixture
def settings(home: Path, smtp_server: SmtpServer) -> Settings:
    """The conftest home with reports sent to the SMTP server and links to BASE."""
    with open(home / "config.toml", "a") as f:
        f.write(EMAIL.format(port=smtp_server.port))
    loaded = load_settings(home / "config.toml", env={})
    loaded.server.base_url = BASE
    return loaded


def _run(client: TestClient[Any], token: str, model_id: int, day: dt.date) -> dict[str, Any]:
    accepted = client.post(
        f"/api/v1/models/{model_id}/runs", headers=bearer(token), json={"date": day.isoformat()}
    )
    assert accepted.status_code == 202, accepted.text
    run = wait_run(client, token, model_id, day)
    assert run["status"] == "succeeded", run
    return run


def _received(smtp: SmtpServer, count: int) -> list[Any]:
    return wait_for(
        lambda: len(smtp.inbox.envelopes) >= count and smtp.inbox.messages(),
        timeout=30,
        what=f"{count} message(s) at the SMTP server",
    )


def test_report_of_a_real_run_by_smtp_and_the_outbox_in_an_outage(
    live_client: TestClient[Any],
    settings: Settings,
    smtp_server: SmtpServer,
    make_user: Callable[..., str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token, admin = make_user("ann@example.com"), make_user("root@example.com", admin=True)
    model_file = write_small_model(tmp_path / "small.dill")
    created = upload(live_client, token, model_file, name="churn", email=REPORTS)
    assert created.status_code == 201, created.text
    mid = created.json()["id"]
    yesterday, day = today() - dt.timedelta(days=1), today()
    _run(live_client, token, mid, yesterday)
    _received(smtp_server, 1)
    run = _run(live_client, token, mid, day)
    messages = _received(smtp_server, 2)
    assert len(smtp_server.inbox.envelopes) == 2  # one report per batch, nothing sent twice

    envelope, message = smtp_server.inbox.envelopes[1], messages[1]
    assert envelope.rcpt_tos == [REPORTS]
    assert envelope.mail_from == "reports@mldropd.example"
    assert message["To"] == REPORTS
    dq = live_client.get(f"/api/v1/models/{mid}/dq", headers=bearer(token)).json()[-1]
    outcome = {"ok": "ok", "warn": "DQ warning", "alert": "DQ alert"}[dq["status"]]
    assert message["Subject"] == f"mldropd: churn scored {day} — {outcome}"
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")  # as sent: CRLF
    html = message.get_body(("html",)).get_content()
    figures = [
        "churn (v1)",
        day.isoformat(),
        "3,000",
        f"PSI {dq['psi']:.3f} (noise level {dq['psi_noise']:.3f})",
        f"AUC {dq['auc']:.3f}",
        f"KS {dq['ks']:.3f}",
        f"compared with {yesterday}",
        f"{BASE}/models/{mid}",
    ]
    for fragment in figures:
        assert fragment in text, (fragment, text)
        assert fragment in html, (fragment, html)
    assert re.search(r"^Time:\s+\d+\.\d+ s$", text, re.MULTILINE), text
    assert "succeeded (attempt 1 of 3)" in text and run["rows"] == 3000
    assert f'<a href="{BASE}/models/{mid}">' in html
    assert live_client.get("/api/v1/outbox", headers=bearer(admin)).json() == []

    # The SMTP server goes away: the next report waits in the outbox, retried with backoff.
    monkeypatch.setattr(outbox, "BACKOFF_BASE", dt.timedelta(seconds=1))  # not 60 s in a test
    smtp_server.stop()
    _run(live_client, token, mid, day)  # scores the date again: a new batch, a new report

    def waiting() -> list[dict[str, Any]]:
        shown = live_client.get("/api/v1/outbox", headers=bearer(admin)).json()
        return [m for m in shown if m["attempts"] >= 1]

    [pending] = wait_for(waiting, timeout=30, what="the report waiting in the outbox")
    assert (pending["to"], pending["status"]) == (REPORTS, "pending")
    assert pending["subject"].startswith(f"mldropd: churn scored {day} — ")
    assert pending["last_error"].startswith(f"SMTP server 127.0.0.1:{smtp_server.port} unreachable")
    assert dt.datetime.fromisoformat(pending["next_attempt_at"]) > dt.datetime.fromisoformat(
        pending["created_at"]
    )
    assert (
        live_client.get("/api/v1/outbox", headers=bearer(token)).status_code == 404
    )  # admins only
    assert len(smtp_server.inbox.envelopes) == 2

    # Back again: the daemon's outbox job (what the 60 s interval job calls) delivers it once.
    smtp_server.start()
    daemon = live_client.app.state.daemon

    def delivered() -> bool:
        daemon.deliver_outbox()
        return len(smtp_server.inbox.envelopes) == 3

    wait_for(delivered, timeout=30, interval=0.5, what="the waiting report to be delivered")
    daemon.deliver_outbox()
    assert len(smtp_server.inbox.envelopes) == 3
    assert smtp_server.inbox.messages()[2]["Subject"] == pending["subject"]
    assert live_client.get("/api/v1/outbox", headers=bearer(admin)).json() == []
    with Session(daemon.engine) as s:
        row = s.get(OutboxMessage, pending["id"])
        assert row is not None and row.status == "sent" and row.attempts >= 1
        statuses = s.exec(select(OutboxMessage.status)).all()
    assert sorted(statuses) == ["sent", "sent", "sent"]
