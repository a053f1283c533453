"""Accounts and sessions: the users CLI, server-side sessions (sign-out, idle expiry, new ids),
CSRF on every page form, trusted-proxy sign-in and the audit log. Real app and database, real
CLI subprocesses, a real daemon for the proxy."""

from __future__ import annotations

import datetime as dt
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from litestar.testing import TestClient

from mldropd.app import create_app
from mldropd.auth import set_disabled
from mldropd.db import make_engine
from mldropd.security import is_trusted
from mldropd.settings import Settings
from tests.support.cli import mldropd
from tests.support.home import today
from tests.support.http import HX, bearer, csrf, sign_in
from tests.support.rows import add_model, hold_scores

# ---- accounts ----------------------------------------------------------------------------------


@pytest.mark.slow  # the CLI in real processes
def test_users_cli_lists_disables_rotates_and_sets_admin(
    client: TestClient[Any], home: Path, make_user: Callable[..., str]
) -> None:
    ann = make_user("ann@example.com")
    bob = make_user("bob@example.com", quota=2)
    engine = client.app.state.daemon.engine
    add_model(engine, "bob@example.com", "bobs")
    sign_in(client, ann)

    listed = mldropd(home, "users", "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["email", "admin", "disabled", "quota", "active_models", "created"]
    assert rows[0].split()[:4] == ["ann@example.com", "20", "(default)", "0"]
    assert rows[1].split()[:3] == ["bob@example.com", "2", "0"]  # bob's model is paused

    assert mldropd(home, "users", "disable", "ann@example.com").returncode == 0
    assert client.get("/api/v1/models", headers=bearer(ann)).status_code == 401
    shown = client.get("/models", follow_redirects=False)  # the session made before is refused
    assert shown.status_code in (302, 303) and shown.headers["location"].startswith("/login")
    again = client.post("/login", data={"token": ann, "_csrf_token": csrf(client)})
    assert again.status_code == 401
    assert mldropd(home, "users", "enable", "ann@example.com").returncode == 0
    assert client.get("/api/v1/models", headers=bearer(ann)).status_code == 200

    rotated = mldropd(home, "users", "rotate-token", "ann@example.com")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("mld_") and len(new) >= 43 and new != ann
    assert client.get("/api/v1/models", headers=bearer(ann)).status_code == 401
    assert client.get("/api/v1/models", headers=bearer(new)).status_code == 200

    assert mldropd(home, "users", "set-admin", "ann@example.com", "--on").returncode == 0
    names = [m["name"] for m in client.get("/api/v1/models", headers=bearer(new)).json()]
    assert names == ["bobs"]  # an admin sees every user's models
    assert mldropd(home, "users", "set-admin", "ann@example.com", "--off").returncode == 0
    assert client.get("/api/v1/models", headers=bearer(new)).json() == []
    assert client.get("/api/v1/models", headers=bearer(bob)).status_code == 200

    unknown = mldropd(home, "users", "disable", "nobody@example.com")
    assert unknown.returncode == 1 and "no user nobody@example.com" in unknown.stderr
    audit = mldropd(home, "audit", "--limit", "6")
    assert audit.returncode == 0, audit.stderr
    actions = [line.split()[3] for line in audit.stdout.splitlines()]
    assert actions == [
        "user.set_admin",
        "user.set_admin",
        "user.rotate_token",
        "user.enable",
        "user.disable",
        "user.add",
    ]
    assert all(line.split()[2].startswith("cli") for line in audit.stdout.splitlines())


# ---- sessions ----------------------------------------------------------------------------------


def _store(client: TestClient[Any]) -> Any:
    return client.app.stores.get("sessions")


def test_sign_out_ends_the_session_on_the_server(
    client: TestClient[Any], app: Any, make_user: Callable[..., str]
) -> None:
    session_id = sign_in(client, make_user("ann@example.com"))
    assert client.get("/models").status_code == 200
    out = client.post("/logout", data={"_csrf_token": csrf(client)}, follow_redirects=False)
    assert out.status_code == 303
    assert anyio.run(_store(client).get, session_id) is None
    # Replaying the old cookie from elsewhere no longer works.
    thief = TestClient(app)
    thief.cookies.set("session", session_id)
    replay = thief.get("/models", follow_redirects=False)
    assert replay.status_code in (302, 303) and replay.headers["location"].startswith("/login")


def test_anonymous_requests_keep_no_session_and_sign_in_gets_a_new_id(
    client: TestClient[Any], settings: Settings, make_user: Callable[..., str]
) -> None:
    folder = Path(settings.server.work_dir) / "sessions"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in ("/login", "/", "/static/app.js", "/nothing"):
        response = client.get(path, follow_redirects=False)
        assert "session=" not in response.headers.get("set-cookie", ""), path
    assert list(folder.iterdir()) == []
    # An id planted in the browser (session fixation) is not kept at sign-in.
    client.cookies.set("session", "planted-by-someone-else", domain=client.base_url.host)
    session_id = sign_in(client, make_user("ann@example.com"))
    assert session_id != "planted-by-someone-else" and len(session_id) == 64
    assert anyio.run(_store(client).get, "planted-by-someone-else") is None
    assert len(list(folder.iterdir())) == 1


def test_idle_sessions_expire_and_use_renews_them(
    settings: Settings, make_user: Callable[..., str]
) -> None:
    settings.server.session_idle_minutes = 2
    client = TestClient(create_app(settings))
    session_id = sign_in(client, make_user("ann@example.com"))
    store = _store(client)
    assert 110 <= anyio.run(store.expires_in, session_id) <= 120
    cookie = client.get("/models").headers["set-cookie"]
    assert "Max-Age=120" in cookie and "HttpOnly" in cookie and "Secure" not in cookie
    # Some idle time passes (its expiry is moved close): a request renews the whole idle span.
    data = anyio.run(store.get, session_id)
    anyio.run(store.set, session_id, data, 30)
    assert client.get("/models").status_code == 200
    assert anyio.run(store.expires_in, session_id) >= 110
    # Idle past the limit: the session is gone and the page asks to sign in.
    anyio.run(store.set, session_id, data, 1)
    time.sleep(1.2)  # let the (shortened) idle time run out; no state to poll for
    expired = client.get("/models", follow_redirects=False)
    assert expired.status_code in (302, 303) and expired.headers["location"].startswith("/login")


def test_secure_cookies_behind_tls(settings: Settings, make_user: Callable[..., str]) -> None:
    settings.server.secure_cookies = True
    client = TestClient(create_app(settings), base_url="https://testserver.local")
    form = client.get("/login")
    assert "Secure" in form.headers["set-cookie"]  # the CSRF cookie
    response = client.post(
        "/login",
        data={"token": make_user("ann@example.com"), "_csrf_token": csrf(client)},
        follow_redirects=False,
    )
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("session="))
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie


def test_secret_key_file_is_created_private(settings: Settings, app: Any) -> None:
    key = Path(settings.server.secret_key_file)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(bytes.fromhex(key.read_text().strip())) == 32


def test_every_page_form_refuses_a_post_without_the_csrf_token(
    client: TestClient[Any], app: Any, make_user: Callable[..., str]
) -> None:
    token = make_user("ann@example.com")
    model_id, _ = add_model(app.state.daemon.engine, "ann@example.com", "churn", versions=2)
    sign_in(client, token)
    posts = sorted(
        r.path
        for r in app.routes
        if "POST" in r.methods and not r.path.startswith(("/api/", "/schema"))
    )
    assert {
        "/login",
        "/logout",
        "/upload",
        "/models/{model_id:int}/run",
        "/models/{model_id:int}/status",
        "/models/{model_id:int}/version",
        "/models/{model_id:int}/delete",
    } <= set(posts)
    form = {"status": "active", "version": "1", "token": token}
    for path in posts:
        url = (
            path.replace("{model_id:int}", str(model_id))
            .replace("{run_id:int}", "1")
            .replace("{action:str}", "publish")
        )
        for headers in ({}, HX, {**HX, "x-csrftoken": "forged"}):
            refused = client.post(url, data=form, headers=headers, follow_redirects=False)
            assert refused.status_code == 403, (url, headers, refused.text)
    # Nothing happened: still signed in, the model still there, paused, on version 2.
    detail = client.get(f"/api/v1/models/{model_id}", headers=bearer(token)).json()
    assert (detail["status"], detail["version"]) == ("paused", 2)
    assert client.get("/models").status_code == 200
    # With the token, the same form works.
    ok = client.post(
        f"/models/{model_id}/status",
        headers={**HX, "x-csrftoken": csrf(client)},
        data={"status": "active"},
    )
    assert ok.status_code == 204


# ---- trusted-proxy sign-in ---------------------------------------------------------------------


def test_trusted_proxies_match_addresses_and_networks() -> None:
    proxies = ["127.0.0.1", "10.1.0.0/16", "::1"]
    assert is_trusted("127.0.0.1", proxies) and is_trusted("10.1.200.3", proxies)
    assert is_trusted("::1", proxies)
    assert not is_trusted("10.2.0.1", proxies) and not is_trusted("127.0.0.2", proxies)
    assert not is_trusted("testclient", proxies) and not is_trusted("", proxies)
    assert not is_trusted("127.0.0.1", [])


def test_proxy_header_is_ignored_from_other_addresses(
    settings: Settings, make_user: Callable[..., str]
) -> None:
    settings.server.trusted_user_header = "X-Forwarded-Email"
    settings.server.trusted_proxies = ["127.0.0.1"]
    make_user("ann@example.com")
    client = TestClient(create_app(settings))  # its requests come from "testclient"
    shown = client.get(
        "/models", headers={"X-Forwarded-Email": "ann@example.com"}, follow_redirects=False
    )
    assert shown.status_code in (302, 303) and shown.headers["location"].startswith("/login")


@pytest.mark.slow
def test_proxy_sign_in_from_a_trusted_address(
    home: Path, settings: Settings, make_user: Callable[..., str], daemon: Any
) -> None:
    ann = make_user("ann@example.com")
    make_user("dave@example.com")
    set_disabled(make_engine(settings.database.path), "dave@example.com", True)
    d = daemon(
        MLDROPD_SERVER__TRUSTED_USER_HEADER="X-Forwarded-Email",
        MLDROPD_SERVER__TRUSTED_PROXIES="10.9.0.0/16, 127.0.0.1",  # a list, comma-separated
    )
    with httpx.Client(base_url=d.url, timeout=30) as http:

        def page(email: str, **extra: str) -> httpx.Response:
            return http.get("/models", headers={"X-Forwarded-Email": email, **extra})

        signed = page("Ann@Example.com")
        assert signed.status_code == 200 and "ann@example.com" in signed.text
        # The peer address decides, not what X-Forwarded-For claims.
        assert page("ann@example.com", **{"X-Forwarded-For": "203.0.113.9"}).status_code == 200
        for email in ("dave@example.com", "nobody@example.com", ""):
            refused = page(email)
            assert refused.status_code in (302, 303), email
            assert refused.headers["location"].startswith("/login"), email
        # The header alone never opens the API: that needs the bearer token.
        api = http.get("/api/v1/models", headers={"X-Forwarded-Email": "ann@example.com"})
        assert api.status_code == 401
        assert http.get("/api/v1/models", headers=bearer(ann)).status_code == 200


# ---- the audit log ------------------------------------------------------------------------------


def test_audit_log_records_who_did_what(
    client: TestClient[Any], app: Any, settings: Settings, make_user: Callable[..., str]
) -> None:
    ann, admin = make_user("ann@example.com"), make_user("root@example.com", admin=True)
    engine = app.state.daemon.engine
    churn, _ = add_model(engine, "ann@example.com", "churn", versions=2)
    held, held_run = add_model(engine, "ann@example.com", "held", quarantined=True)
    spare, spare_run = add_model(engine, "ann@example.com", "spare", quarantined=True)
    for model_id in (held, spare):
        hold_scores(settings, model_id, today() - dt.timedelta(days=1))
    h = bearer(ann)
    assert client.patch(f"/api/v1/models/{churn}", headers=h, json={"status": "active"}).is_success
    assert client.patch(f"/api/v1/models/{churn}", headers=h, json={"status": "paused"}).is_success
    assert client.patch(f"/api/v1/models/{churn}", headers=h, json={"version": 1}).is_success
    assert client.patch(
        f"/api/v1/models/{churn}", headers=h, json={"schedule": "weekly:mon"}
    ).is_success
    assert client.post(f"/api/v1/models/{churn}/runs", headers=h, json={}).status_code == 202
    assert client.post(f"/api/v1/runs/{held_run}/publish", headers=h).status_code == 200
    assert client.post(f"/api/v1/runs/{spare_run}/discard", headers=h).status_code == 200
    assert client.delete(f"/api/v1/models/{spare}", headers=h).status_code == 204

    events = client.get("/api/v1/audit", headers=bearer(admin)).json()
    mine = [(e["action"], e["target"]) for e in events if e["actor"] == "ann@example.com"]
    assert mine == [
        ("model.delete", f"model:{spare}"),
        ("run.discard", f"run:{spare_run}"),
        ("run.publish", f"run:{held_run}"),
        ("run.request", f"model:{churn}"),
        ("model.update", f"model:{churn}"),
        ("model.rollback", f"model:{churn}"),
        ("model.pause", f"model:{churn}"),
        ("model.resume", f"model:{churn}"),
    ]
    by_action = {e["action"]: e for e in events}
    assert by_action["model.rollback"]["detail"] == {"name": "churn", "to_version": 1}
    assert by_action["model.update"]["detail"] == {"name": "churn", "schedule": "weekly:mon"}
    assert by_action["run.request"]["detail"]["date"] == today().isoformat()
    assert by_action["user.add"]["target"] in ("user:ann@example.com", "user:root@example.com")
    for e in events:
        assert dt.datetime.fromisoformat(e["at"]).tzinfo is not None
    # Filters and limits; only admins may read it (others: 404, anonymous: 401).
    only = client.get(
        "/api/v1/audit", headers=bearer(admin), params={"action": "model.pause", "limit": 5}
    ).json()
    assert [e["target"] for e in only] == [f"model:{churn}"]
    assert len(client.get("/api/v1/audit?limit=2", headers=bearer(admin)).json()) == 2
    assert client.get("/api/v1/audit?limit=0", headers=bearer(admin)).status_code == 422
    assert client.get("/api/v1/audit", headers=h).status_code == 404
    assert client.get("/api/v1/audit").status_code == 401
