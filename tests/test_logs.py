"""Logs: JSON lines from the daemon and its batch job, an access log, and never a secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mldropd.logs import JsonFormatter, TextFormatter, redact
from tests.support.wait import wait_for

TOKEN = "mld_" + "x" * 43


def _record(msg: str, **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("mldropd.test", logging.INFO, __file__, 1, msg, (), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_formatters_carry_the_fields_and_scrub_credentials() -> None:
    record = _record(f"retry for Bearer {TOKEN}", run_id=7, date="2026-11-27", user="a@b.c")
    data = json.loads(JsonFormatter().format(record))
    assert data["level"] == "INFO" and data["logger"] == "mldropd.test"
    assert data["ts"].endswith("Z") and data["run_id"] == 7 and data["date"] == "2026-11-27"
    assert TOKEN not in data["event"] and "<redacted>" in data["event"]
    text = TextFormatter().format(record)
    assert "run_id=7" in text and "user=a@b.c" in text and TOKEN not in text
    assert redact("cookie session=abc123; csrftoken=zz") == (
        "cookie session=<redacted>; csrftoken=<redacted>"
    )


@pytest.fixture
def restore_logging() -> Any:
    """configure() rewires the process's logging; put it back after the test."""
    import sys
    import threading

    root = logging.getLogger()
    saved = (root.handlers[:], root.level, sys.excepthook, threading.excepthook)
    yield
    root.handlers[:], level, sys.excepthook, threading.excepthook = saved
    root.setLevel(level)
    logging.captureWarnings(False)


def test_a_child_s_stray_output_becomes_a_json_event(
    capsys: pytest.CaptureFixture[str], restore_logging: Any
) -> None:
    from mldropd.logs import configure, relay_line

    configure("json")
    job_event = JsonFormatter().format(_record("batch started", run_id=3))
    relay_line(job_event + "\n", run_id=3)
    relay_line(f"WARN NativeCodeLoader: no native library; token {TOKEN}\n", run_id=3)
    relay_line("\n", run_id=3)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == job_event
    stray = json.loads(lines[1])
    assert stray["logger"] == "mldropd.batch.job" and stray["run_id"] == 3
    assert stray["event"].startswith("WARN NativeCodeLoader") and TOKEN not in lines[1]
    assert len(lines) == 2
    configure("text")
    relay_line(f"plain line {TOKEN}\n")
    assert capsys.readouterr().err == "plain line mld_<redacted>\n"


def _csrf(web: httpx.Client) -> str:
    if "csrftoken" not in web.cookies:
        web.get("/login")
    return str(web.cookies["csrftoken"])


@pytest.mark.slow
def test_json_log_with_access_log_never_shows_a_secret(
    home: Path,
    daemon: Callable[..., Any],
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("ann@example.com")
    wrong = "mld_" + "w" * 43
    d = daemon(MLDROPD_SERVER__LOG_FORMAT="json", MLDROPD_SERVER__ACCESS_LOG="true")
    bearer = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=d.url, timeout=120) as web:
        assert web.get("/api/v1/models", headers=bearer).status_code == 200
        bad = web.get("/api/v1/models", headers={"Authorization": f"Bearer {wrong}"})
        assert bad.status_code == 401
        # A token pasted into a URL by mistake: the query string is never logged.
        assert web.get(f"/api/v1/models?token={token}", headers=bearer).status_code == 200
        with open(model_files["lgbm"], "rb") as f:
            upload = web.post("/api/v1/models", headers=bearer, files={"file": ("lgbm.dill", f)})
        assert upload.status_code == 201, upload.text
        model_id = upload.json()["id"]
        run = web.post(f"/api/v1/models/{model_id}/runs", headers=bearer, json={})
        run_id = run.json()["run_id"]
        wait_for(
            lambda: (
                web.get(f"/api/v1/runs/{run_id}", headers=bearer).json()["status"]
                in ("succeeded", "failed")
            ),
            timeout=180,
            what="the run",
        )
        signed_in = web.post(
            "/login",
            data={"token": token, "_csrf_token": _csrf(web)},
            follow_redirects=False,
        )
        assert signed_in.status_code == 303
        session = web.cookies["session"]
        csrf = web.cookies["csrftoken"]
        assert web.get("/").status_code == 200
        assert web.get("/no-such-page").status_code in (303, 404)
    d.stop()

    log = d.log.read_text()
    secret_key = (home / "secret.key").read_text().strip()
    for secret in (token, wrong, session, csrf, secret_key, token.removeprefix("mld_")):
        assert secret not in log
    events = [json.loads(line) for line in log.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "event"} <= set(e) for e in events)
    access = [e for e in events if e["logger"] == "mldropd.access"]
    by_call = {(e["method"], e["path"], e["status"]): e for e in access}
    assert by_call["GET", "/api/v1/models", 200]["user"] == "ann@example.com"
    assert "user" not in by_call["GET", "/api/v1/models", 401]
    assert by_call["POST", "/api/v1/models", 201]["user"] == "ann@example.com"
    assert ("POST", "/login", 303) in by_call
    assert by_call["GET", "/", 200]["user"] == "ann@example.com"  # from the session cookie
    assert all(isinstance(e["ms"], float) for e in access)
    # The batch job's own events join the daemon's log, as JSON, with the run's ids.
    job = [e for e in events if e["logger"].startswith("mldropd.batch") and "run_id" in e]
    assert job, "no batch job event with a run_id"
