"""HTML pages through Litestar's TestClient with the real app, database and sandbox: sign-in,
CSRF, HTMX partials vs full pages, ownership, uploads; and the SVG charts as units."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlmodel import select

from mldropd.app import create_app
from mldropd.auth import rotate_token
from mldropd.db import session_scope
from mldropd.pages import charts
from mldropd.records import BatchRun, DQResult, Model, ModelRun, OutboxMessage, User
from mldropd.settings import Settings
from tests.support.home import today
from tests.support.http import HX, csrf, page_upload
from tests.support.wait import wait_for

SVG = "{http://www.w3.org/2000/svg}"


def sign_in(client: TestClient[Any], token: str) -> None:
    response = client.post(
        "/login",
        data={"token": token, "_csrf_token": csrf(client), "next": "/models"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/models"


def hx_post(client: TestClient[Any], path: str, **data: str) -> Any:
    return client.post(
        path, data=data, headers={**HX, "x-csrftoken": csrf(client)}, follow_redirects=False
    )


def engine(client: TestClient[Any]) -> Any:
    return client.app.state.daemon.engine


def add_model(
    client: TestClient[Any],
    owner: str,
    name: str,
    dq: list[tuple[str, float | None]],
    thresholds: dict[str, float] | None = None,
) -> int:
    """A paused model (never swept) with DQ results on consecutive past dates."""
    with session_scope(engine(client)) as s:
        user = s.exec(select(User).where(User.email == owner)).one()
        model = Model(owner_id=user.id or 0, name=name, email=owner, status="paused")
        s.add(model)
        s.flush()
        start = today() - dt.timedelta(days=len(dq))
        for i, (status, psi) in enumerate(dq):
            day = start + dt.timedelta(days=i)
            batch = BatchRun(date=day, trigger="backfill", status="succeeded")
            s.add(batch)
            s.flush()
            run = ModelRun(
                batch_id=batch.id or 0,
                model_id=model.id or 0,
                model_version=1,
                date=day,
                trigger="backfill",
                status="succeeded",
                rows=100,
                seconds=1.0,
            )
            s.add(run)
            s.flush()
            details = {
                "thresholds": thresholds
                or {"psi_warn": 0.1, "psi_alert": 0.25, "auc_warn": 0.6, "auc_alert": 0.75}
            }
            s.add(
                DQResult(
                    model_run_id=run.id or 0,
                    model_id=model.id or 0,
                    date=day,
                    reference_date=None if psi is None else day - dt.timedelta(days=1),
                    psi=psi,
                    psi_noise=None if psi is None else 0.002,
                    auc=None if psi is None else 0.55,
                    status=status,
                    reason=f"{name} {status}",
                    details=details,
                )
            )
        return model.id or 0


# -- sign-in, sign-out, CSRF -----------------------------------------------------------------


def test_anonymous_visitors_are_sent_to_sign_in(client: TestClient[Any]) -> None:
    for path in ("/", "/models", "/models/1", "/dashboard", "/schedule-preview?schedule=daily"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code in (302, 303), path
        assert response.headers["location"] == f"/login?next={path.split('?')[0]}"
    page = client.get("/login?next=/dashboard")
    assert page.status_code == 200 and 'name="next" value="/dashboard"' in page.text
    # An off-site "next" is never followed.
    assert 'value="/"' in client.get("/login?next=//evil.example").text


def test_sign_in_and_out(
    client: TestClient[Any], settings: Settings, make_user: Callable[..., str]
) -> None:
    token = make_user("ann@example.com")
    refused = client.post("/login", data={"token": token}, follow_redirects=False)
    assert refused.status_code == 403  # no CSRF token
    wrong = client.post("/login", data={"token": "mld_nope", "_csrf_token": csrf(client)})
    assert wrong.status_code == 401 and "not valid" in wrong.text

    response = client.post(
        "/login", data={"token": token, "_csrf_token": csrf(client)}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("session="))
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert token not in cookie  # the session holds the user id and token hash, encrypted

    home = client.get("/")
    assert home.status_code == 200
    assert 'id="dropzone"' in home.text and 'type="file"' in home.text
    assert 'value="ann@example.com"' in home.text  # the report email is prefilled
    assert "htmx-2.0.11.min.js" in home.text and '"x-csrftoken"' in home.text
    assert client.get("/login", follow_redirects=False).status_code == 303  # already signed in

    out = client.post("/logout", data={"_csrf_token": csrf(client)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/login"
    assert client.get("/", follow_redirects=False).status_code in (302, 303)

    # A rotated token ends the sessions made with the old one.
    sign_in(client, token)
    assert client.get("/models").status_code == 200
    rotate_token(engine(client), "ann@example.com")
    assert client.get("/models", follow_redirects=False).status_code in (302, 303)


def test_actions_need_the_csrf_token(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    sign_in(client, make_user("bob@example.com"))
    model_id = add_model(client, "bob@example.com", "churn", [])
    for path, data in (
        (f"/models/{model_id}/status", {"status": "active"}),
        (f"/models/{model_id}/run", {}),
        (f"/models/{model_id}/delete", {}),
        ("/upload", {}),
    ):
        refused = client.post(path, data=data, headers=HX, follow_redirects=False)
        assert refused.status_code == 403, (path, refused.text)
    assert client.get(f"/models/{model_id}").status_code == 200  # nothing was deleted

    # HTMX sends the token as a header and gets 204 plus the refresh event.
    done = hx_post(client, f"/models/{model_id}/status", status="active")
    assert done.status_code == 204 and done.headers["hx-trigger"] == "models-changed"
    # A plain form sends it as a field and is redirected back to the model.
    back = client.post(
        f"/models/{model_id}/status",
        data={"status": "paused", "_csrf_token": csrf(client)},
        follow_redirects=False,
    )
    assert back.status_code == 303 and back.headers["location"] == f"/models/{model_id}"
    assert 'class="badge paused"' in client.get(f"/models/{model_id}").text
    # Domain errors come back as HTML: the flash partial for HTMX.
    bad = hx_post(client, f"/models/{model_id}/status", status="gone")
    assert bad.status_code == 422 and 'class="flash error"' in bad.text
    assert "<html" not in bad.text


# -- pages and partials ----------------------------------------------------------------------


def test_another_users_model_page_is_not_found(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    make_user("ann@example.com")
    bob, root = make_user("bob@example.com"), make_user("root@example.com", admin=True)
    model_id = add_model(client, "ann@example.com", "anns_model", [("ok", None)])
    sign_in(client, bob)
    page = client.get(f"/models/{model_id}")
    assert page.status_code == 404 and "Model not found" in page.text and "<html" in page.text
    assert "anns_model" not in page.text
    partial = client.get(f"/models/{model_id}", headers=HX)
    assert partial.status_code == 404 and "<html" not in partial.text
    assert hx_post(client, f"/models/{model_id}/run").status_code == 404
    assert hx_post(client, f"/models/{model_id}/delete").status_code == 404
    assert "anns_model" not in client.get("/models").text
    assert "anns_model" not in client.get("/dashboard").text
    sign_in(client, root)  # admins see everyone's models
    assert client.get(f"/models/{model_id}").status_code == 200
    assert "anns_model" in client.get("/dashboard").text


def test_models_page_partial_polls_while_a_run_is_in_progress(
    live_client: TestClient[Any], make_user: Callable[..., str], model_files: dict[str, Path]
) -> None:
    sign_in(live_client, make_user("ann@example.com"))
    empty = live_client.get("/models", headers=HX)
    assert (
        empty.text.lstrip().startswith('<div id="models-table"') and "No models yet" in empty.text
    )

    card = page_upload(live_client, model_files["logreg"].read_bytes(), "churn_logreg.dill")
    assert card.status_code == 201, card.text
    model_id = int(re.search(r'data-model-id="(\d+)"', card.text).group(1))  # type: ignore[union-attr]

    full = live_client.get("/models")
    assert full.text.startswith("<!doctype html>") and 'id="models-table"' in full.text
    partial = live_client.get("/models", headers=HX)
    assert "<html" not in partial.text and f'id="model-{model_id}"' in partial.text
    assert "every 2s" not in partial.text  # nothing running: no polling
    assert partial.headers["vary"] == "HX-Request"  # caches keep page and partial apart
    restore = live_client.get("/models", headers={**HX, "HX-History-Restore-Request": "true"})
    assert restore.text.startswith("<!doctype html>")  # the back button needs the whole page

    started = hx_post(live_client, f"/models/{model_id}/run")
    assert started.status_code == 204 and started.headers["hx-trigger"] == "models-changed"
    polling = live_client.get("/models", headers=HX).text
    assert "every 2s" in polling and re.search(
        r'data-role="run-status">(pending|running)<', polling
    )

    def finished() -> str | None:
        text = live_client.get("/models", headers=HX).text
        return text if "every 2s" not in text else None

    settled = wait_for(finished, timeout=120, what="the run to finish")
    assert 'data-role="run-status">succeeded<' in settled
    detail = live_client.get(f"/models/{model_id}", headers=HX).text
    assert detail.lstrip().startswith('<div id="model-detail"') and "every 2s" not in detail


def test_upload_answers_the_card_or_every_error(
    live_client: TestClient[Any], make_user: Callable[..., str], model_files: dict[str, Path]
) -> None:
    sign_in(live_client, make_user("ann@example.com"))
    broken = page_upload(
        live_client,
        b"not a pickle",
        "broken.dill",
        email="nope",
        schedule="weekly:xyz",
        name="Bad Name!",
    )
    assert broken.status_code == 422 and "<html" not in broken.text
    assert 'id="upload-errors"' in broken.text and 'data-field="file"' in broken.text
    for field in ("email", "name"):  # each next to its field, swapped out of band
        assert re.search(
            rf'id="err-{field}" class="field-error" hx-swap-oob="true"[^>]*>\s*<span>', broken.text
        ), field
    assert 'id="schedule-preview" hx-swap-oob="innerHTML"' in broken.text

    content = model_files["logreg"].read_bytes()
    card = page_upload(
        live_client,
        content,
        "churn_logreg.dill",
        email="reports@example.com",
        schedule="weekly:mon",
    )
    assert card.status_code == 201, card.text
    text = card.text
    assert 'id="model-card"' in text and "churn_logreg" in text and "v1" in text
    assert '<span class="features-count">10</span>' in text and "every Monday" in text
    assert text.count('class="bar"') == 20 and "rows/s" in text
    assert re.search(r'id="err-email" class="field-error" hx-swap-oob="true"\s*>\s*</p>', text)
    again = page_upload(live_client, content, "churn_logreg.dill")
    assert again.status_code == 201 and "v2" in again.text and "new version" in again.text
    model_id = int(re.search(r'data-model-id="(\d+)"', again.text).group(1))  # type: ignore[union-attr]

    rolled = hx_post(live_client, f"/models/{model_id}/version", version="1")
    assert rolled.status_code == 204
    assert "<small>v1</small>" in live_client.get("/models", headers=HX).text
    assert hx_post(live_client, f"/models/{model_id}/version", version="x").status_code == 422

    # Without JavaScript the form posts normally: a page with the errors, or a redirect.
    plain = live_client.post(
        "/upload",
        files={"file": ("b.dill", b"junk", "application/octet-stream")},
        data={"email": "kept@example.com", "_csrf_token": csrf(live_client)},
    )
    assert plain.status_code == 422 and "<!doctype html>" in plain.text
    assert 'value="kept@example.com"' in plain.text and 'id="upload-errors"' in plain.text
    ok = live_client.post(
        "/upload",
        files={"file": ("churn_logreg.dill", content, "x/y")},
        data={"_csrf_token": csrf(live_client)},
        follow_redirects=False,
    )
    assert ok.status_code == 303 and ok.headers["location"] == f"/models/{model_id}"


def test_too_large_upload_is_refused_unread(
    settings: Settings, make_user: Callable[..., str]
) -> None:
    settings.limits.max_upload_mb = 1
    client = TestClient(create_app(settings), timeout=60)  # refused before any batch could run
    sign_in(client, make_user("ann@example.com"))
    big = page_upload(client, b"x" * (3 * 1024 * 1024), "big.dill")
    assert big.status_code == 413 and 'data-field="file"' in big.text
    assert "larger than the limit of 1 MB" in big.text


def test_schedule_preview(client: TestClient[Any], make_user: Callable[..., str]) -> None:
    sign_in(client, make_user("ann@example.com"))
    weekly = client.get("/schedule-preview", params={"schedule": "weekly:mon"}).text
    assert "every Monday" in weekly
    next_day = dt.date.fromisoformat(re.findall(r"\d{4}-\d\d-\d\d", weekly)[0])
    assert next_day.weekday() == 0
    assert "on day 15 of every month" in client.get("/schedule-preview?schedule=monthly:15").text
    cron = client.get("/schedule-preview", params={"schedule": "0 6 * * 1-5"}).text
    assert "Monday" in cron and "Friday" in cron
    bad = client.get("/schedule-preview", params={"schedule": "every tuesday"})
    assert bad.status_code == 200 and 'class="bad"' in bad.text and "unknown schedule" in bad.text


def test_model_page_plots_dq_and_shows_the_last_report(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    sign_in(client, make_user("ann@example.com"))
    thresholds = {"psi_warn": 0.05, "psi_alert": 0.2, "auc_warn": 0.6, "auc_alert": 0.8}
    model_id = add_model(
        client,
        "ann@example.com",
        "churn",
        [("ok", None), ("ok", 0.01), ("warn", 0.07), ("alert", 0.3)],
        thresholds,
    )
    with session_scope(engine(client)) as s:
        for to, subject in (
            ("ann@example.com", "mldropd: churn scored 2026-01-02 — DQ alert"),
            ("ann@example.com", "mldropd: churn_v2 scored 2026-01-02 — ok"),
            ("other@example.com", "mldropd: churn scored 2026-01-02 — ok"),
        ):
            s.add(
                OutboxMessage(to=to, subject=subject, body_text=f"body of {subject}", status="kept")
            )
    page = client.get(f"/models/{model_id}").text
    psi = re.search(r'<figure class="chart-box" id="psi-chart">(<svg.*?</svg>)', page, re.S)
    assert psi is not None
    svg = ET.fromstring(psi.group(1))
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "warn 0.05" in labels and "alert 0.2" in labels and "PSI" in labels
    assert len([c for c in svg.iter(f"{SVG}circle") if "line" in c.get("class", "")]) == 3
    assert 'id="auc-chart"' in page and "alert 0.8" in page
    assert "Last report email" in page and "body of mldropd: churn scored" in page
    assert "churn_v2" not in page and "other@example.com" not in page


def test_dashboard_sorts_and_filters(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    sign_in(client, make_user("ann@example.com"))
    add_model(client, "ann@example.com", "a_ok", [("ok", None), ("ok", 0.01)])
    add_model(client, "ann@example.com", "b_alert", [("ok", None), ("alert", 0.4)])
    add_model(client, "ann@example.com", "c_new", [])
    add_model(client, "ann@example.com", "d_warn", [("ok", None), ("warn", 0.12)])

    def order(text: str) -> list[str]:
        return re.findall(r'<tr data-model="([^"]+)"', text)

    page = client.get("/dashboard")
    assert page.text.startswith("<!doctype html>")
    assert order(page.text) == ["b_alert", "d_warn", "a_ok", "c_new"]
    assert page.text.count('<svg class="spark"') == 3 and "no PSI yet" in page.text
    assert order(client.get("/dashboard?sort=name").text) == [
        "a_ok",
        "b_alert",
        "c_new",
        "d_warn",
    ]
    assert order(client.get("/dashboard?sort=psi").text)[:3] == ["b_alert", "d_warn", "a_ok"]
    alerts = client.get("/dashboard?only=alerts", headers=HX).text
    assert alerts.lstrip().startswith('<div id="dashboard-table"') and "<html" not in alerts
    assert order(alerts) == ["b_alert"] and "1 alert" in alerts


def test_long_lists_are_paged_and_links_keep_the_sort(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    sign_in(client, make_user("ann@example.com"))
    with session_scope(engine(client)) as s:
        owner = s.exec(select(User).where(User.email == "ann@example.com")).one()
        for i in range(105):
            s.add(Model(owner_id=owner.id or 0, name=f"m{i:03d}", email=owner.email))

    def names(text: str) -> list[str]:
        return re.findall(r'<tr (?:id="model-\d+" )?data-model="([^"]+)"', text)

    first = client.get("/models").text
    assert names(first) == [f"m{i:03d}" for i in range(100)]
    assert "1–100 of 105" in first and 'href="/models?page=2" rel="next"' in first
    second = client.get("/models?page=2", headers=HX).text
    assert names(second) == [f"m{i:03d}" for i in range(100, 105)]
    assert 'hx-get="/models?page=2"' in second and 'rel="prev"' in second  # polls its own page
    assert names(client.get("/models?page=9").text) == names(second)  # past the end: the last
    assert names(client.get("/models?page=x").text) == names(first)  # not a number: the first

    board = client.get("/dashboard?sort=name&page=2").text
    assert names(board) == [f"m{i:03d}" for i in range(100, 105)]
    assert 'href="/dashboard?sort=name&amp;page=1" rel="prev"' in board
    assert "105 no DQ yet" in board  # the counts are of every model, not of the page


def test_sparkline_shows_a_rescored_date_once_with_its_newest_result(
    client: TestClient[Any], make_user: Callable[..., str]
) -> None:
    sign_in(client, make_user("ann@example.com"))
    model_id = add_model(client, "ann@example.com", "churn", [("ok", 0.02), ("ok", 0.01)])
    with session_scope(engine(client)) as s:  # the last date scored again: a newer result
        last = s.exec(
            select(DQResult).where(DQResult.model_id == model_id).order_by(DQResult.date.desc())
        ).first()
        assert last is not None
        thresholds = {"psi_warn": 0.2, "psi_alert": 0.5, "auc_warn": 0.6, "auc_alert": 0.75}
        s.add(
            DQResult(
                model_run_id=last.model_run_id,
                model_id=model_id,
                date=last.date,
                psi=0.3,
                status="warn",
                details={"thresholds": thresholds},
            )
        )
    board = client.get("/dashboard").text
    assert "PSI over the last 2 dates: 0.020, 0.300" in board
    spark = re.search(r'(<svg class="spark".*?</svg>)', board, re.S)
    assert spark is not None
    warn = [ln for ln in parse(spark.group(1)).iter(f"{SVG}line") if ln.get("class") == "thr-warn"]
    assert len(warn) == 1  # drawn at the newest result's own warn threshold (0.2 of 0.3)
    assert float(warn[0].get("y1", 0)) == pytest.approx(30 - 4 - 0.2 / 0.3 * 22, abs=0.06)


# -- charts ----------------------------------------------------------------------------------


def parse(svg: Any) -> ET.Element:
    return ET.fromstring(str(svg))


def test_histogram_svg_has_bars_axes_and_labels() -> None:
    counts = [1, 5, 10, 4, 0]
    root = parse(charts.histogram_svg(counts, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "Dry <run>"))
    assert root.get("role") == "img" and "Dry <run>: 20 rows" in (root.get("aria-label") or "")
    bars = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]
    assert len(bars) == 5
    heights = [float(b.get("height") or 0) for b in bars]
    assert heights.index(max(heights)) == 2 and heights[4] == 0
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"score", "rows", "Dry <run>", "0", "1"} <= set(texts)
    assert "Dry &lt;run&gt;" in str(
        charts.histogram_svg(counts, [0, 0.2, 0.4, 0.6, 0.8, 1], "Dry <run>")
    )
    empty = parse(charts.histogram_svg([1, 2], [0.0, 1.0]))
    assert "no scores to plot" in "".join(t.text or "" for t in empty.iter(f"{SVG}text"))


def test_compare_histogram_draws_reference_outline_as_shares() -> None:
    root = parse(
        charts.compare_histogram_svg(
            [10, 30],
            [200, 200],
            [0.0, 0.5, 1.0],
            current_label="2026-01-02",
            reference_label="2026-01-01",
        )
    )
    assert len([r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]) == 2
    assert len(list(root.iter(f"{SVG}polyline"))) == 1
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "share of rows (%)" in texts and "2026-01-01" in texts and "2026-01-02" in texts


def test_trend_svg_draws_thresholds_and_skips_missing_values() -> None:
    d0 = dt.date(2026, 1, 1)
    points = [(d0 + dt.timedelta(days=i), v) for i, v in enumerate([None, 0.02, 0.3, None, 0.05])]
    root = parse(
        charts.trend_svg(
            [charts.Series("PSI", points)],
            [charts.Threshold("warn", 0.1), charts.Threshold("alert", 0.25, "thr-alert")],
            "PSI",
            "PSI",
        )
    )
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "warn 0.1" in texts and "alert 0.25" in texts and "date" in texts
    assert "2026-01-01" in texts  # the axis spans every DQ date, with or without a value
    assert len(list(root.iter(f"{SVG}circle"))) == 3
    assert len(list(root.iter(f"{SVG}polyline"))) == 1  # the gap on day 4 ends the line
    warn = next(ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "thr-warn")
    alert = next(ln for ln in root.iter(f"{SVG}line") if ln.get("class") == "thr-alert")
    assert float(alert.get("y1") or 0) < float(warn.get("y1") or 0)  # higher value, higher up
    assert "latest 0.05" in (root.get("aria-label") or "")
    single = parse(charts.trend_svg([charts.Series("PSI", [(d0, 0.01)])], [], "PSI", "PSI"))
    assert len(list(single.iter(f"{SVG}circle"))) == 1
    none = parse(charts.trend_svg([charts.Series("PSI", [(d0, None)])], [], "PSI", "PSI"))
    assert "no values yet" in (none.get("aria-label") or "")


def test_sparkline_and_ticks() -> None:
    spark = parse(charts.sparkline_svg([None, 0.01, 0.2], "alert", warn=0.1))
    assert spark.get("class") == "spark"
    assert next(spark.iter(f"{SVG}circle")).get("class") == "dot last alert"
    assert "0.010, 0.200" in (spark.get("aria-label") or "")
    assert "no PSI yet" in str(charts.sparkline_svg([None, None]))
    ticks = charts.nice_ticks(0, 0.27)
    assert ticks == [0, 0.1, 0.2]
    assert charts.nice_ticks(0, 1200, 5) == [0, 500, 1000]
    assert (charts.fmt_number(1500), charts.fmt_number(0.25), charts.fmt_number(0)) == (
        "1,500",
        "0.25",
        "0",
    )
