"""Security: the sandbox hides the daemon's secrets, admin-allowed pickle globals, security
headers and the CSP, and input hardening (names, 422s, the streaming size limit). Real app, real
database, real sandbox children, real daemons. Accounts and sessions: tests/test_accounts.py."""

from __future__ import annotations

import os
import re
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from mldropd.db import make_engine
from mldropd.inspect import FUNCTIONS_NOTE
from mldropd.registry import name_from_filename
from mldropd.security import CSP
from mldropd.settings import Settings
from tests.support.cli import mldropd
from tests.support.home import today
from tests.support.http import HX, bearer, csrf, sign_in
from tests.support.rows import add_model
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


# ---- the sandbox: secrets, private folder, stdin ---------------------------------------------

SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-4b1c9e",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE7Q2",
    "MLDROPD_SECRET": "mldropd-secret-77e0",
}


def make_probe(secret_values: list[str], daemon_cwd: str) -> Callable[..., Any]:
    """A model whose every score is flags/8: 1 = a secret is visible in its environment,
    2 = its working folder is not a private one (its own tmpfs /tmp, or a mldropd-sandbox-
    folder), 4 = stdin is open to something other than /dev/null. Inside mldropd it raises
    instead, so a leak fails the upload (or the run) visibly."""

    def probe(frame: Any) -> Any:
        import os
        import sys

        import numpy as np

        names = [k for k in os.environ if k.startswith(("MLDROPD_", "AWS_"))]
        values = [v for v in secret_values if any(v in text for text in os.environ.values())]
        cwd = os.path.realpath(os.getcwd())
        home = os.path.realpath(os.environ.get("HOME", "/"))
        tmp = os.path.realpath(os.environ.get("TMPDIR", "/"))
        own = cwd == "/tmp" or os.path.basename(cwd).startswith("mldropd-sandbox-")
        private = cwd == home == tmp and own and cwd != daemon_cwd
        try:
            stdin_ok = os.path.samestat(os.fstat(0), os.stat(os.devnull))
        except OSError:
            stdin_ok = True  # closed altogether
        flags = (1 if names or values else 0) | (0 if private else 2) | (0 if stdin_ok else 4)
        main = sys.modules["__main__"].__spec__  # model hosts are forked by the fork server
        if flags and main is not None and main.name == "mldropd.jobs.forkserver":
            raise RuntimeError(f"sandbox leak {flags}: {names} {values} cwd={cwd}")
        return np.full(len(frame), flags / 8.0)

    return probe


def test_probe_finds_secrets_when_they_are_there(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe is a real detector: in this process (no sandbox) it sees all three problems."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    probe = make_probe(list(SECRETS.values()), os.getcwd())
    stdin_is_devnull = os.path.samestat(os.fstat(0), os.stat(os.devnull))
    expected = (1 | 2 | (0 if stdin_is_devnull else 4)) / 8.0
    assert probe(np.zeros((3, 1))).tolist() == [expected] * 3


@pytest.mark.slow
def test_models_in_the_sandbox_see_no_secrets(
    home: Path, settings: Settings, make_user: Callable[..., str], daemon: Any
) -> None:
    password = home / "smtp.password"
    password.write_text("smtp-password-31d")
    env = {**SECRETS, "MLDROPD_EMAIL__PASSWORD_FILE": str(password)}
    token, admin = make_user("ann@example.com"), make_user("root@example.com", admin=True)
    probe = make_probe([*SECRETS.values(), str(password)], os.path.realpath(ROOT))
    blob = dill.dumps({"pipeline": probe, "features": ["f00", "f01"]}, recurse=True)
    d = daemon(**env)
    with httpx.Client(base_url=d.url, timeout=120) as http:
        # A file name that tries to climb out of the store becomes a plain model name.
        up = http.post(
            "/api/v1/models", headers=bearer(token), files={"file": ("../../Env Probe.dill", blob)}
        )
        assert up.status_code == 201, up.text  # validation ran the probe: no leak
        model = up.json()
        assert model["name"] == "env-probe"
        version = model["versions"][0]
        assert FUNCTIONS_NOTE in version["scan_notes"]
        assert "dill._dill._create_function" in version["scan"]["globals"]
        stored = list(Path(settings.storage.path).rglob("model.dill"))
        assert [p.relative_to(settings.storage.path).parts for p in stored] == [
            ("users", "1", "models", str(model["id"]), "v1", "model.dill")
        ]
        run = http.post(f"/api/v1/models/{model['id']}/runs", headers=bearer(token), json={})
        assert run.status_code == 202, run.text
        run_id = run.json()["run_id"]

        def finished() -> dict[str, Any] | None:
            body = http.get(f"/api/v1/runs/{run_id}", headers=bearer(token)).json()
            return body if body["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, timeout=180, what="the probe's scoring run")
        assert done["status"] == "succeeded", done["error"]
        audit = http.get(
            "/api/v1/audit", headers=bearer(admin), params={"target": f"model:{model['id']}"}
        ).json()
        assert [e["action"] for e in audit] == ["run.request", "model.upload"]
        assert {e["actor"] for e in audit} == {"ann@example.com"}
    folder = Path(settings.scores.path) / f"dt={today().isoformat()}" / f"model={model['id']}"
    scores = pq.read_table(folder).column("score").to_pylist()
    assert len(scores) == 3000
    flags = sorted({int(round(s * 8)) for s in scores})
    assert flags == [0], f"the scoring child saw: {flags} (1 secret, 2 cwd, 4 stdin)"


# ---- pickle globals an admin allows ----------------------------------------------------------


def _cwd_model() -> bytes:
    def pipeline(frame: Any) -> Any:
        return np.zeros(len(frame))

    # os.getcwd pickles as posix.getcwd, which the scan refuses (os.* / posix.*).
    return dill.dumps(
        {"pipeline": pipeline, "features": ["f00"], "meta": {"cwd": os.getcwd}}, recurse=True
    )


@pytest.mark.slow  # uploads validated in sandboxed children, and the CLI
def test_admin_allows_a_refused_global_for_one_user(
    client: TestClient[Any], home: Path, make_user: Callable[..., str]
) -> None:
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    admin = make_user("root@example.com", admin=True)
    blob = _cwd_model()
    refused = client.post("/api/v1/models", headers=bearer(ann), files={"file": ("cwd.dill", blob)})
    assert refused.status_code == 422 and "posix.getcwd" in refused.text

    allowed = mldropd(home, "users", "allow-global", "ann@example.com", "posix.getcwd")
    assert allowed.returncode == 0, allowed.stderr
    nothing = mldropd(home, "users", "allow-global", "ann@example.com", "numpy.mean")
    assert nothing.returncode == 1 and "not refused by the scan" in nothing.stderr

    ok = client.post("/api/v1/models", headers=bearer(ann), files={"file": ("cwd.dill", blob)})
    assert ok.status_code == 201, ok.text
    version = ok.json()["versions"][0]
    assert version["scan"]["allowed"] == ["posix.getcwd"] and version["scan"]["refused"] == []
    assert any("allowed for you by an admin: posix.getcwd" in n for n in version["scan_notes"])
    assert FUNCTIONS_NOTE in version["scan_notes"]
    # Only for ann: the same file from bob is still refused.
    again = client.post("/api/v1/models", headers=bearer(bob), files={"file": ("cwd.dill", blob)})
    assert again.status_code == 422 and "posix.getcwd" in again.text

    events = client.get("/api/v1/audit", headers=bearer(admin)).json()
    allow = next(e for e in events if e["action"] == "user.allow_global")
    assert allow["target"] == "user:ann@example.com" and allow["actor"].startswith("cli")
    assert allow["detail"] == {"name": "posix.getcwd"}
    upload = next(e for e in events if e["action"] == "model.upload")
    assert upload["detail"]["allowed_globals"] == ["posix.getcwd"]
    assert upload["detail"]["functions"] is True

    # The model card at upload shows the imports and the sentence about functions.
    sign_in(client, ann)
    card = client.post(
        "/upload", files={"file": ("cwd2.dill", blob)}, headers={**HX, "x-csrftoken": csrf(client)}
    )
    assert card.status_code == 201, card.text
    assert "posix.getcwd" in card.text and FUNCTIONS_NOTE in card.text


# ---- response headers and the CSP -------------------------------------------------------------


def test_security_headers_on_pages_api_static_and_errors(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    token = make_user("ann@example.com")
    for path, headers in (
        ("/login", {}),
        ("/api/v1/models", bearer(token)),
        ("/api/v1/models", {}),
        ("/static/app.js", {}),
        ("/nothing", {}),
        ("/healthz", {}),
    ):
        response = client.get(path, headers=headers, follow_redirects=False)
        h = response.headers
        assert h["content-security-policy"] == CSP, path
        assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
        assert h["referrer-policy"] == "same-origin"
    assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP
    assert "unsafe-inline" not in CSP and "unsafe-eval" not in CSP
    docs = client.get("/schema/swagger")  # the OpenAPI viewer loads from a CDN: no CSP there
    assert "content-security-policy" not in docs.headers
    assert docs.headers["x-frame-options"] == "DENY"


INLINE = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>|\son[a-z]+\s*=|\sstyle\s*=|<style", re.I)


def test_pages_have_no_inline_script_or_style(
    client: TestClient[Any], app: Any, make_user: Callable[..., str]
) -> None:
    """What the CSP would block: inline <script>, on*= handlers, style attributes, <style>."""
    for template in (ROOT / "web" / "templates").glob("*.html"):
        assert not INLINE.search(template.read_text()), template.name
    token = make_user("ann@example.com")
    model_id, _ = add_model(app.state.daemon.engine, "ann@example.com", "churn", versions=2)
    sign_in(client, token)
    for path in ("/", "/models", f"/models/{model_id}", "/dashboard", "/login"):
        html = client.get(path).text
        assert not INLINE.search(html), (path, INLINE.search(html))


# ---- input hardening ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "name"),
    [
        ("../../evil.dill", "evil"),
        ("..\\..\\evil.pkl", "evil"),
        ("/etc/passwd", "passwd"),
        ("C:\\Users\\ann\\Churn Model.dill", "churn-model"),
        ("....dill", ""),
        ("a/../../../.hidden", ""),
    ],
)
def test_file_names_become_safe_model_names(filename: str, name: str) -> None:
    assert name_from_filename(filename) == name
    assert "/" not in name and "\\" not in name and ".." not in name


def test_bad_requests_answer_every_problem(
    client: TestClient[Any], app: Any, make_user: Callable[..., str]
) -> None:
    token = make_user("ann@example.com")
    model_id, _ = add_model(app.state.daemon.engine, "ann@example.com", "churn")
    h = bearer(token)
    # A name that could climb out of the store, next to an empty file: both problems, at once.
    up = client.post(
        "/api/v1/models",
        headers=h,
        data={"name": "../x", "schedule": "* * *"},
        files={"file": ("../../x.dill", b"")},
    )
    assert up.status_code == 422
    assert {e["field"] for e in up.json()["errors"]} == {"file", "name", "schedule"}
    cases = [
        ("patch", f"/api/v1/models/{model_id}", [1, 2], 422, "data"),
        ("patch", f"/api/v1/models/{model_id}", {"schedule": "0 25 * * *"}, 422, "schedule"),
        ("patch", f"/api/v1/models/{model_id}", {"owner": "me"}, 422, "owner"),
        ("post", f"/api/v1/models/{model_id}/runs", {"date": "2026-02-30"}, 422, "date"),
        ("post", f"/api/v1/models/{model_id}/runs", {"date": "2999-01-01"}, 422, "date"),
        (
            "post",
            "/api/v1/runs",
            {"model_ids": [model_id], "from": "2026-01-09", "to": "2026-01-02"},
            422,
            "to",
        ),
        ("get", "/api/v1/runs?model_id=abc", None, 422, "model_id"),
        ("get", "/api/v1/runs?date=yesterday", None, 422, "date"),
    ]
    for method, url, body, status, field in cases:
        kwargs = {"json": body} if body is not None else {}
        response = client.request(method.upper(), url, headers=h, **kwargs)
        assert response.status_code == status, (url, body, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], (url, response.text)
    malformed = client.patch(
        f"/api/v1/models/{model_id}",
        headers={**h, "content-type": "application/json"},
        content=b"{not json",
    )
    assert malformed.status_code == 400 and "malformed" in malformed.text
    # Ids too large for the database are simply not found (they once answered 500).
    huge = 2**70
    assert client.get(f"/api/v1/models/{huge}", headers=h).status_code == 404
    assert client.get(f"/api/v1/runs/{huge}", headers=h).status_code == 404
    assert client.get(f"/api/v1/runs?model_id={huge}", headers=h).json() == []


def _chunked_upload(url: str, token: str, limit_mb: int) -> tuple[int, int]:
    """Stream a multipart upload with chunked encoding (no Content-Length) until the daemon
    answers; return (status, bytes sent by then). Never sends more than 20x the limit."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "mldropdboundary"
    head = (
        f"POST /api/v1/models HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="big.dill"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    chunk = b"\0" * (256 * 1024)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        try:
            for i in range(limit_mb * 4 * 20):
                data = part + chunk if i == 0 else chunk
                sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                sent += len(data)
                if select.select([sock], [], [], 0.05)[0]:  # a client on a slow link
                    break  # the daemon has answered
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon answered and closed: read its answer below
        answer = sock.recv(65536).decode("latin-1")
    return int(answer.split(" ", 2)[1]), sent


@pytest.mark.slow
def test_upload_without_length_is_cut_off_at_the_limit(
    make_user: Callable[..., str], daemon: Any
) -> None:
    token = make_user("ann@example.com")
    d = daemon(MLDROPD_LIMITS__MAX_UPLOAD_MB="1")
    status, sent = _chunked_upload(d.url, token, 1)
    print(f"chunked upload refused with {status} after {sent} bytes sent")
    assert status == 413
    # Refused while streaming: shortly past the limit (1 MB file + 1 MB form slack), never
    # after the 20 MB this client was ready to send.
    assert sent < 4 * 1024 * 1024, sent


CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", e =>
  window.__csp.push(e.violatedDirective + " " + (e.blockedURI || e.sample || "")));
"""


@pytest.mark.browser
@pytest.mark.slow
def test_pages_break_no_csp_rule_in_a_browser(
    page: Any,
    settings: Settings,
    make_user: Callable[..., str],
    daemon: Any,
) -> None:
    """Chromium reports every CSP violation; the pages (with htmx at work) cause none."""
    from playwright.sync_api import expect

    token = make_user("ann@example.com")
    engine = make_engine(settings.database.path)
    model_id, _ = add_model(engine, "ann@example.com", "churn", versions=2)
    served = daemon()
    messages: list[str] = []
    page.on("console", lambda m: messages.append(m.text))
    page.add_init_script(CSP_WATCH)
    page.goto(f"{served.url}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Deploy a model")).to_be_visible()
    page.select_option("#schedule-kind", "weekly")  # an htmx request and swap
    expect(page.locator("#schedule-preview")).to_contain_text("every Monday")
    violations = page.evaluate("window.__csp")
    for path in ("/models", "/dashboard", f"/models/{model_id}"):
        page.goto(f"{served.url}{path}")
        expect(page.locator("main")).to_be_visible()
        violations += page.evaluate("window.__csp")
    page.click("#versions button[type=submit]")  # roll back via htmx: a refresh event follows
    expect(page.locator("#model-detail h1 small")).to_have_text("v1")
    violations += page.evaluate("window.__csp")
    assert violations == []
    assert not [m for m in messages if "Content Security Policy" in m]
