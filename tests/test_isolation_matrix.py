"""Isolation between users, proven over EVERY route of the app x {owner, another user, admin,
anonymous, disabled user}.

The routes come from `app.routes`, so a new route cannot escape: it fails
test_the_table_covers_every_route until it is given an expectation in TABLE. Each case gets
its own fresh model of the owner's (rows made directly in the database), so deletes and
rollbacks never disturb another case. Rules: another user's object answers exactly like one
that does not exist (404, never 403); anonymous and disabled users get 401 from the API and a
redirect to /login from pages; lists never include another user's items. The app runs without
its lifespan, so run requests are queued and no batch job starts: fast.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from mldropd.app import create_app
from mldropd.auth import create_user, set_disabled
from mldropd.settings import load_settings
from tests.support.http import HX, csrf, sign_in
from tests.support.rows import add_model, hold_scores

ACTORS = ("owner", "other", "admin", "anonymous", "disabled")
EMAILS = {
    "owner": "ann@example.com",
    "other": "bob@example.com",
    "admin": "root@example.com",
    "disabled": "dave@example.com",
}
MISSING = 987654  # an id no row has
YESTERDAY = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).date().isoformat()


@dataclass
class World:
    app: Any
    settings: Any
    tokens: dict[str, str]
    pages: dict[str, TestClient[Any]]
    api: TestClient[Any]
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def fresh(self, *, failed: bool = False) -> tuple[int, int, str]:
        """A new model of the owner's with 2 versions and a held run; (model, run, name)."""
        name = f"ann-m{next(self.counter)}"
        model_id, run_id = add_model(
            self.app.state.daemon.engine,
            EMAILS["owner"],
            name,
            versions=2,
            run_status="failed" if failed else "succeeded",
            quarantined=not failed,
        )
        hold_scores(self.settings, model_id, dt.date.fromisoformat(YESTERDAY))
        return model_id, run_id, name

    def call_api(self, actor: str, method: str, url: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[actor]}"} if actor in self.tokens else {}
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if method == "POST" and url == "/api/v1/models":
            kwargs = {"files": {"file": ("empty.dill", b"")}}
        return self.api.request(method, url, headers=headers, follow_redirects=False, **kwargs)

    def call_page(
        self, actor: str, method: str, url: str, form: dict[str, str] | None = None
    ) -> Any:
        client = self.pages[actor]
        if method == "GET":
            return client.get(url, follow_redirects=False)
        headers = {**HX, "x-csrftoken": csrf(client)}
        if url == "/upload":
            return client.post(
                url, headers=headers, files={"file": ("empty.dill", b"")}, follow_redirects=False
            )
        return client.post(url, headers=headers, data=form or {}, follow_redirects=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    home: Path = tmp_path_factory.mktemp("matrix")
    (home / "config.toml").write_text("[server]\nport = 8999\n")
    settings = load_settings(home / "config.toml", env={})
    app = create_app(settings)
    engine = app.state.daemon.engine
    tokens = {
        actor: create_user(engine, email, admin=actor == "admin")[1]
        for actor, email in EMAILS.items()
    }
    add_model(engine, EMAILS["other"], "bobs-own")  # so "other" has a list of its own
    pages = {actor: TestClient(app) for actor in ACTORS}
    for actor, token in tokens.items():
        sign_in(pages[actor], token)
    set_disabled(engine, EMAILS["disabled"], True)  # after signing in: the session must fail
    return World(app, settings, tokens, pages, TestClient(app))


def _numbers_out(text: str) -> str:
    return re.sub(r"\d+", "N", text)


# ---- the rules ------------------------------------------------------------------------------

Check = Callable[[World, str, str, str], None]


def api_owned(ok: int, body: Any = None, key: str = "model_id") -> Check:
    """An API route on one owned object: owner and admin `ok`; another user exactly like a
    missing id (404); anonymous and disabled 401."""

    def check(w: World, actor: str, method: str, path: str) -> None:
        model_id, run_id, _ = w.fresh()
        ids = {"model_id": model_id, "run_id": run_id}
        url = path.replace("{model_id:int}", str(ids["model_id"])).replace(
            "{run_id:int}", str(ids["run_id"])
        )
        data = body(model_id) if callable(body) else body
        response = w.call_api(actor, method, url, data)
        if actor in ("owner", "admin"):
            assert response.status_code == ok, response.text
        elif actor == "other":
            assert response.status_code == 404, response.text
            missing_url = url.replace(str(ids[key]), str(MISSING))
            missing_data = body(MISSING) if callable(body) else body
            missing = w.call_api(actor, method, missing_url, missing_data)
            assert missing.status_code == 404
            assert _numbers_out(response.text) == _numbers_out(missing.text)
        else:
            assert response.status_code == 401, response.text

    return check


def api_list(body: Any = None, items: Callable[[Any], list[dict[str, Any]]] = lambda j: j) -> Check:
    """A listing: the owner sees its items, another user never sees them, admin sees all."""

    def check(w: World, actor: str, method: str, path: str) -> None:
        model_id, _, name = w.fresh(failed=True)
        response = w.call_api(actor, method, path, body)
        if actor in ("anonymous", "disabled"):
            assert response.status_code == 401, response.text
            return
        assert response.status_code in (200, 202), response.text
        found = items(response.json())
        ids = {r.get("model_id", r.get("id")) for r in found}
        owners = {r["owner"] for r in found if "owner" in r}
        if actor == "other":
            assert model_id not in ids and EMAILS["owner"] not in owners, found
            again = w.call_api(actor, method, f"{path}?owner={EMAILS['owner']}", body)
            assert EMAILS["owner"] not in {r.get("owner") for r in items(again.json())}
        else:
            assert model_id in ids, (actor, found)
        if actor == "owner":
            assert owners <= {EMAILS["owner"]}

    return check


def api_admin(ok: int, body: Any = None) -> Check:
    """Admin-only: admin `ok`; every other user 404 (as if it did not exist); anonymous 401."""

    def check(w: World, actor: str, method: str, path: str) -> None:
        url = path.replace("{email:str}", EMAILS["owner"])
        response = w.call_api(actor, method, url, body)
        expected = {"admin": ok, "owner": 404, "other": 404}.get(actor, 401)
        assert response.status_code == expected, response.text

    return check


def api_signed_in(ok: int) -> Check:
    def check(w: World, actor: str, method: str, path: str) -> None:
        response = w.call_api(actor, method, path)
        expected = 401 if actor in ("anonymous", "disabled") else ok
        assert response.status_code == expected, response.text

    return check


def _to_login(response: Any) -> None:
    assert response.status_code in (302, 303), response.text
    assert response.headers["location"].startswith("/login")


def page_gate(ok: int) -> Check:
    """The DQ-gate page route, checked for both of its actions."""
    checks = {a: page_owned(ok, action=a) for a in ("publish", "discard")}

    def check(w: World, actor: str, method: str, path: str) -> None:
        for action_check in checks.values():
            action_check(w, actor, method, path)

    return check


def page_owned(ok: int, form: dict[str, str] | None = None, action: str = "publish") -> Check:
    """A page on one owned model: owner and admin `ok`; another user 404 like a missing id;
    anonymous and disabled are sent to sign in."""

    def check(w: World, actor: str, method: str, path: str) -> None:
        model_id, run_id, _ = w.fresh()
        url = (
            path.replace("{model_id:int}", str(model_id))
            .replace("{run_id:int}", str(run_id))
            .replace("{action:str}", action)
        )
        response = w.call_page(actor, method, url, form)
        if actor in ("owner", "admin"):
            assert response.status_code == ok, response.text
        elif actor == "other":
            assert response.status_code == 404, response.text
            missing = w.call_page(actor, method, url.replace(str(model_id), str(MISSING)), form)
            assert missing.status_code == 404
        else:
            _to_login(response)

    return check


def page_list() -> Check:
    def check(w: World, actor: str, method: str, path: str) -> None:
        _, _, name = w.fresh()
        response = w.call_page(actor, method, path)
        if actor in ("anonymous", "disabled"):
            _to_login(response)
        elif actor == "other":
            assert response.status_code == 200 and "ann-m" not in response.text
            assert "bobs-own" in response.text
        else:
            assert response.status_code == 200 and name in response.text

    return check


def page_signed_in(ok: int) -> Check:
    def check(w: World, actor: str, method: str, path: str) -> None:
        response = w.call_page(actor, method, path)
        if actor in ("anonymous", "disabled"):
            _to_login(response)
        else:
            assert response.status_code == ok, response.text

    return check


def public(*ok: int) -> Check:
    """No account needed, and nothing about any user's objects in it."""

    def check(w: World, actor: str, method: str, path: str) -> None:
        url = {
            "/static/{file_path:path}": "/static/app.js",
            "/schema/{path:str}": "/schema/nothing",
        }.get(path, path)
        response = w.call_api(actor, method, url)
        assert response.status_code in ok, (url, response.text[:300])
        assert "ann-m" not in response.text and EMAILS["owner"] not in response.text

    return check


def login_form(w: World, actor: str, method: str, path: str) -> None:
    if method == "GET":  # signed in: on to the app; otherwise (disabled too) the form
        response = w.call_page(actor, "GET", path)
        ok = 303 if actor in ("owner", "other", "admin") else 200
        assert response.status_code == ok, response.text
        return
    client = w.pages[actor]
    token = w.tokens.get(actor, "mld_not-a-token")
    response = client.post(
        path, data={"token": token, "_csrf_token": csrf(client)}, follow_redirects=False
    )
    assert response.status_code == (303 if actor in ("owner", "other", "admin") else 401)


def logout(w: World, actor: str, method: str, path: str) -> None:
    """Everyone may sign out (it only ends the caller's own session); checked last."""
    response = w.call_page(actor, method, path)
    assert response.status_code in (204, 303), response.text
    assert w.call_page(actor, "GET", "/models").status_code in (302, 303)


# ---- the table: every (method, route) of the app --------------------------------------------

M = "/api/v1/models/{model_id:int}"
R = "/api/v1/runs/{run_id:int}"
P = "/models/{model_id:int}"
TABLE: dict[tuple[str, str], Check] = {
    ("GET", "/api/v1/models"): api_list(),
    ("POST", "/api/v1/models"): api_signed_in(422),  # an empty file: refused after sign-in
    ("GET", M): api_owned(200),
    ("PATCH", M): api_owned(200, {"schedule": "weekly:mon", "version": 1}),
    ("DELETE", M): api_owned(204),
    ("POST", f"{M}/runs"): api_owned(202, {"date": YESTERDAY}),
    ("GET", f"{M}/dq"): api_owned(200),
    ("GET", "/api/v1/runs"): api_list(),
    ("POST", "/api/v1/runs"): api_owned(202, lambda m: {"model_ids": [m], "date": YESTERDAY}),
    ("POST", "/api/v1/runs/rerun-failed"): api_list({"date": YESTERDAY}, lambda j: j["runs"]),
    ("GET", R): api_owned(200, key="run_id"),
    ("POST", f"{R}/publish"): api_owned(200, key="run_id"),
    ("POST", f"{R}/discard"): api_owned(200, key="run_id"),
    ("PATCH", "/api/v1/users/{email:str}"): api_admin(200, {"quota": 500}),
    ("GET", "/api/v1/outbox"): api_admin(200),
    ("GET", "/api/v1/audit"): api_admin(200),
    ("GET", "/login"): login_form,
    ("POST", "/login"): login_form,
    ("GET", "/"): page_signed_in(200),
    ("POST", "/upload"): page_signed_in(422),
    ("GET", "/schedule-preview"): page_signed_in(200),
    ("GET", "/upload-progress/{ticket_id:str}"): page_signed_in(200),
    ("GET", "/models"): page_list(),
    ("GET", "/dashboard"): page_list(),
    ("GET", P): page_owned(200),
    ("POST", f"{P}/run"): page_owned(204),
    ("POST", f"{P}/status"): page_owned(204, {"status": "active"}),
    ("POST", f"{P}/version"): page_owned(204, {"version": "1"}),
    ("POST", f"{P}/delete"): page_owned(204),
    ("POST", f"{P}/runs/{{run_id:int}}/{{action:str}}"): page_gate(204),
    ("GET", "/healthz"): public(200),
    ("GET", "/readyz"): public(200, 503),  # 503 here: the scheduler is not started
    ("GET", "/metrics"): public(200),
    ("GET", "/static/{file_path:path}"): public(200),
    ("HEAD", "/static/{file_path:path}"): public(200),
    **{
        ("GET", f"/schema{p}"): public(200)
        for p in (
            "",
            "/openapi.json",
            "/openapi.yaml",
            "/openapi.yml",
            "/swagger",
            "/redoc",
            "/rapidoc",
            "/elements",
            "/oauth2-redirect.html",
        )
    },
    ("GET", "/schema/{path:str}"): public(404),
    ("POST", "/logout"): logout,  # last: it ends each actor's session
}


def app_routes(app: Any) -> set[tuple[str, str]]:
    return {(m, r.path) for r in app.routes for m in r.methods if m != "OPTIONS"}


def test_the_table_covers_every_route(world: World) -> None:
    routes = app_routes(world.app)
    missing = sorted(routes - set(TABLE))
    assert not missing, f"routes without an isolation expectation in TABLE: {missing}"
    assert not sorted(set(TABLE) - routes), "TABLE lists routes the app no longer has"


def test_every_route_for_every_actor(world: World) -> None:
    failures = []
    routes = app_routes(world.app)
    for (method, path), check in TABLE.items():  # insertion order: /logout comes last
        if (method, path) not in routes:
            continue
        for actor in ACTORS:
            try:
                check(world, actor, method, path)
            except AssertionError as exc:
                failures.append(f"{method} {path} as {actor}: {str(exc)[:400]}")
    assert not failures, f"{len(failures)} isolation failures:\n" + "\n".join(failures)
