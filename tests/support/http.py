"""HTTP helpers for Litestar's TestClient: bearer headers, CSRF, sign-in, API uploads and runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from tests.support.wait import wait_for

HX = {"HX-Request": "true"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def csrf(client: TestClient[Any]) -> str:
    """The CSRF cookie, set by any page."""
    if "csrftoken" not in client.cookies:
        client.get("/login")
    return str(client.cookies["csrftoken"])


def sign_in(client: TestClient[Any], token: str) -> str:
    """Sign in through the form; return the session id the browser now holds."""
    response = client.post(
        "/login", data={"token": token, "_csrf_token": csrf(client)}, follow_redirects=False
    )
    assert response.status_code == 303, response.text
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("session="))
    return cookie.split(";", 1)[0].removeprefix("session=")


def upload(client: TestClient[Any], token: str, path: Path, **form: str) -> Any:
    """POST /api/v1/models with the file at path (and optional form fields)."""
    with open(path, "rb") as f:
        return client.post(
            "/api/v1/models",
            headers=bearer(token),
            files={"file": (path.name, f, "application/octet-stream")},
            data=form,
        )


def wait_run(client: TestClient[Any], token: str, model_id: int, day: dt.date) -> dict[str, Any]:
    """Wait until every run of the model on day has finished; the first of them."""

    def finished() -> dict[str, Any] | None:
        runs = client.get(
            "/api/v1/runs",
            params={"model_id": model_id, "date": day.isoformat()},
            headers=bearer(token),
        ).json()
        done = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return done[0] if done and len(done) == len(runs) else None

    return wait_for(finished, timeout=180, what=f"run of model {model_id} on {day}")


def page_upload(client: TestClient[Any], content: bytes, filename: str, **form: str) -> Any:
    """Post a file the way the drop zone does (XHR with the HTMX and CSRF headers)."""
    return client.post(
        "/upload",
        files={"file": (filename, content, "application/octet-stream")},
        data=form,
        headers={**HX, "x-csrftoken": csrf(client)},
    )
