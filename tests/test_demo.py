"""The demo home `make run` serves: 30 days of history made by the daemon itself, with its
stories (a drift into warn and alert, a failed run retried, a paused model) and a report e-mail
for each. Built once per module with fewer rows, then read through the API, the outbox and a
real Chromium. With MLDROPD_DOCS_SCREENSHOTS=1 the home has `make run`'s rows and the browser
test refreshes the screenshots of README.md and docs/web-ui.md (docs/screenshots/)."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mldropd.demo import DEMO_ENTITIES
from mldropd.demo_story import (
    ALERT_FROM,
    DAYS,
    DRIFTING,
    PAUSE_AFTER,
    PAUSED,
    RETRIED,
    SWING_FROM,
    day_to_day_swing,
    swing,
    write_story_features,
)
from tests.support.browser import DOCS, SHOTS, WIDE, drop
from tests.support.wait import free_port, wait_for

DOCS_SHOTS = os.environ.get("MLDROPD_DOCS_SCREENSHOTS") == "1"
# Customers per day: a few thousand tell the same stories faster; the docs show make run's home.
ROWS = DEMO_ENTITIES if DOCS_SHOTS else 3000
# The first test to use the home builds it (1.5-4 min on 2 shared cores; make run's rows: more).
pytestmark = pytest.mark.timeout(900)


def demo(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mldropd", "demo", "--dir", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def token_of(output: str) -> str | None:
    """The API token the demo printed (its banner), if printed yet."""
    return next((w for w in output.split() if w.startswith("mld_")), None)


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """`mldropd demo` started once: it builds the home and its history (fewer rows)."""
    home = tmp_path_factory.mktemp("demo") / "home"
    done = demo(home, "--no-serve", "--port", str(free_port()), "--rows", str(ROWS))
    assert done.returncode == 0, done.stderr[-5000:]
    assert "History built in" in done.stderr
    token = token_of(done.stdout)
    assert token is not None, done.stdout
    return home, token


@pytest.fixture(scope="module")
def served(demo_home: tuple[Path, str]) -> Iterator[tuple[str, str, Path]]:
    """`mldropd demo` started again, serving as `make run` does: (url, its token, its log)."""
    home, _ = demo_home
    port = free_port()
    log = home.parent / "second-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mldropd", "demo", "--dir", str(home), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> str | None:
        if proc.poll() is not None:
            raise AssertionError(f"the demo exited: {log.read_text()[-3000:]}")
        try:
            httpx.get(f"{url}/healthz", timeout=1).raise_for_status()
        except httpx.HTTPError:
            return None
        return token_of(log.read_text())

    try:
        token = wait_for(up, timeout=120, what="the demo's second start")
        yield url, token, log
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def api(served: tuple[str, str, Path]) -> Iterator[Any]:
    """An httpx client signed in with the token the serving demo printed."""
    url, token, _ = served
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        yield client


def by_name(api: Any) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in api.get("/api/v1/models").json()}


@pytest.mark.slow
def test_the_models_show_every_status(api: Any) -> None:
    models = by_name(api)
    assert {name: m["status"] for name, m in models.items()} == {
        DRIFTING: "active",
        RETRIED: "active",
        PAUSED: "paused",
    }
    assert {name: m["last_dq"]["status"] for name, m in models.items()} == {
        DRIFTING: "alert",
        RETRIED: "ok",
        PAUSED: "warn",
    }
    runs = api.get("/api/v1/runs").json()
    assert {r["status"] for r in runs} == {"succeeded", "failed"}


@pytest.mark.slow
def test_the_drifting_model_goes_from_ok_to_warn_to_alert(api: Any) -> None:
    model = by_name(api)[DRIFTING]
    dq = sorted(api.get(f"/api/v1/models/{model['id']}/dq").json(), key=lambda d: d["date"])
    statuses = [d["status"] for d in dq]
    assert len(statuses) == DAYS
    assert set(statuses[:SWING_FROM]) == {"ok"}, statuses
    first_warn, first_alert = statuses.index("warn"), statuses.index("alert")
    assert SWING_FROM <= first_warn < first_alert, statuses
    assert statuses.count("warn") >= 3 and statuses.count("alert") >= 3, statuses
    assert set(statuses[first_alert:]) == {"alert"}, statuses
    warn, alert = dq[first_warn], dq[-1]
    assert 0.1 <= warn["psi"] < 0.25 and alert["psi"] >= 0.25
    assert "days_since_login" in alert["reason"] and "sessions_per_week" in alert["reason"]
    assert [d["reference_date"] for d in dq[1:]] == [d["date"] for d in dq[:-1]]
    # Each day's reference rows are the sample kept when the day before was scored: the batch
    # job read no slice a second time for DQ.
    assert [d["details"]["samples"] for d in dq[1:]] == [
        {
            "current": "drawn during the scoring read",
            "reference": f"kept when the {d['date']} slice was scored",
        }
        for d in dq[:-1]
    ]


@pytest.mark.slow
def test_the_failed_run_is_retried_after_the_slice_is_repaired(api: Any) -> None:
    model = by_name(api)[RETRIED]
    today = model["last_run"]["date"]
    runs = api.get("/api/v1/runs", params={"model_id": model["id"], "date": today}).json()
    runs = sorted(runs, key=lambda r: r["attempt"])
    assert [(r["status"], r["attempt"], r["trigger"]) for r in runs] == [
        ("failed", 1, "manual"),
        ("succeeded", 2, "retry"),
    ]
    assert "lacks basket_size" in runs[0]["error"]
    assert runs[1]["rows"] == ROWS
    every_run = api.get("/api/v1/runs", params={"model_id": model["id"]}).json()
    assert len(every_run) == DAYS + 1  # one a day, and the retry


@pytest.mark.slow
def test_the_paused_model_stops_after_its_warning(api: Any) -> None:
    model = by_name(api)[PAUSED]
    runs = api.get("/api/v1/runs", params={"model_id": model["id"]}).json()
    assert len(runs) == PAUSE_AFTER + 1 and {r["status"] for r in runs} == {"succeeded"}
    last = max(dt.date.fromisoformat(r["date"]) for r in runs)
    assert model["last_run"]["date"] == last.isoformat()
    assert model["next_run_date"] is None
    dq = api.get(f"/api/v1/models/{model['id']}/dq").json()
    assert max(dq, key=lambda d: d["date"])["status"] == "warn"


@pytest.mark.slow
def test_one_report_email_per_case(demo_home: tuple[Path, str]) -> None:
    home, _ = demo_home
    subjects = sorted(
        str(email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"])
        for p in (home / "outbox").glob("*.eml")
    )
    cases = {
        "quiet weeks": lambda s: s.endswith("— all ok"),
        "warnings": lambda s: "DQ warning" in s and "alert" not in s,
        "alerts": lambda s: "DQ alerts" in s and "failed" not in s,
        "failure": lambda s: s.endswith("— 1 failed, DQ alert"),
        "retry": lambda s: f"{RETRIED} scored" in s and s.endswith("— ok after a retry"),
    }
    assert len(subjects) == len(cases), subjects
    for case, matches in cases.items():
        assert len([s for s in subjects if matches(s)]) == 1, (case, subjects)


@pytest.mark.slow
def test_a_second_start_serves_the_history_it_kept(
    demo_home: tuple[Path, str], served: tuple[str, str, Path], api: Any
) -> None:
    """`make run` again: no scoring, the same history, a fresh token in the banner."""
    _, first_token = demo_home
    url, token, log = served
    started = log.read_text()
    assert "Scoring 30 days" not in started and f"then open {url}/dashboard" in started
    runs = api.get("/api/v1/runs").json()
    assert len(runs) == DAYS + (DAYS + 1) + (PAUSE_AFTER + 1)  # drifting, retried, paused
    old = httpx.get(f"{url}/api/v1/models", headers={"Authorization": f"Bearer {first_token}"})
    assert old.status_code == 401 and token != first_token


@pytest.mark.slow
def test_a_home_without_a_finished_history_is_refused(tmp_path: Path) -> None:
    """A database but no history mark (interrupted, or an older demo): said, nothing built."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mldropd.db").write_bytes(b"")
    done = demo(home, "--no-serve", timeout=120)
    assert done.returncode != 0
    assert "no finished 30-day history" in done.stderr and f"rm -r {home}" in done.stderr
    assert not (home / "features").exists()


def test_each_day_differs_from_the_last_by_the_schedule() -> None:
    """The drift story's arithmetic: alternating offsets, growing day-to-day moves, bounded."""
    moves = [abs(swing(i) - swing(i - 1)) for i in range(1, DAYS + 10)]
    assert moves == pytest.approx([day_to_day_swing(i) for i in range(1, DAYS + 10)])
    assert moves[: SWING_FROM - 1] == [0.0] * (SWING_FROM - 1)
    assert moves[ALERT_FROM - 1] > max(moves[: ALERT_FROM - 1])
    assert max(abs(swing(i)) for i in range(DAYS + 10)) < 0.6  # values stay sensible


def test_features_go_on_after_the_history(tmp_path: Path) -> None:
    """A later start adds the missing days, numbered from the first slice (the stories go on)."""
    root = tmp_path / "features"
    today = dt.date(2026, 3, 30)
    start = write_story_features(root, today, 1000)
    assert start == today - dt.timedelta(days=DAYS - 1)
    assert write_story_features(root, today + dt.timedelta(days=2), 1000) == start
    assert len(list(root.glob("dt=*/part-0.parquet"))) == DAYS + 2


# -- the pages, in a real Chromium ---------------------------------------------------------------
def shot(page: Any, name: str) -> None:
    """A test artifact; with MLDROPD_DOCS_SCREENSHOTS=1 also the docs' picture of the page
    (its top, down to the end of <main> or 1,150 px)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"demo-{name}.png"), full_page=True)
    if DOCS_SHOTS:
        bottom = page.evaluate("document.querySelector('main').getBoundingClientRect().bottom")
        clip = {"x": 0, "y": 0, "width": WIDE["width"], "height": min(int(bottom) + 16, 1150)}
        page.screenshot(path=str(DOCS / f"{name}.png"), clip=clip, full_page=True)


@pytest.mark.slow  # builds the demo home, as the API tests do
@pytest.mark.browser
def test_the_demo_in_a_browser(
    demo_home: tuple[Path, str], served: tuple[str, str, Path], page: Any
) -> None:
    """What a newcomer sees: every status on the dashboard and the models table, trend charts
    with a shape, the failed run and its retry, a new version dropped on the deploy page."""
    from playwright.sync_api import expect

    home, _ = demo_home
    url, token, _ = served
    page.goto(f"{url}/dashboard")
    page.fill("#token", token)
    page.click("button[type=submit]")
    counts = page.locator(".counts")
    for text in ("1 alert", "1 warn", "1 ok"):
        expect(counts).to_contain_text(text)
    for name, status in ((DRIFTING, "alert"), (PAUSED, "warn"), (RETRIED, "ok")):
        row = page.locator(f"tr[data-model={name}]")
        expect(row).to_have_attribute("data-dq", status)
        expect(row.locator("svg.spark circle")).not_to_have_count(0)
    expect(page.locator(f"tr[data-model={PAUSED}]")).to_contain_text("paused")
    shot(page, "dashboard")

    page.click("nav >> text=My models")
    rows = {name: page.locator(f"tr[data-model={name}]") for name in (DRIFTING, RETRIED, PAUSED)}
    expect(rows[DRIFTING].locator(".health")).to_have_text("active")
    expect(rows[PAUSED].locator(".health")).to_have_text("paused")
    expect(rows[PAUSED].locator(".next-run")).to_have_text("paused")
    expect(rows[RETRIED].locator(".last-run")).to_contain_text("attempt 2")
    for name, status in ((DRIFTING, "alert"), (PAUSED, "warn"), (RETRIED, "ok")):
        expect(rows[name].locator(".dq")).to_contain_text(status)
    shot(page, "models")

    rows[RETRIED].locator("a.name").click()
    expect(page.locator("#runs-table tr.run.failed")).to_have_count(1)
    expect(page.locator("#runs-table")).to_contain_text("lacks basket_size")
    expect(page.locator("#report")).to_contain_text("ok after a retry")

    page.click("nav >> text=My models")
    page.locator(f"tr[data-model={DRIFTING}] a.name").click()
    expect(page.locator("#psi-chart svg circle.dot.line")).to_have_count(DAYS - 1)
    expect(page.locator("#auc-chart svg circle.dot.line")).to_have_count(DAYS - 1)
    expect(page.locator("#psi-chart svg text.thr-label")).to_have_count(2)
    expect(page.locator("#runs-table tr.run.succeeded")).to_have_count(DAYS)
    shot(page, "model-detail")

    # The owner retrains the drifting model and drops the new version on the deploy page.
    page.click("nav >> text=Deploy")
    content = (home / "models" / f"{DRIFTING}.dill").read_bytes()
    drop(page, content, f"{DRIFTING}.dill")
    card = page.locator("#model-card")
    expect(card).to_contain_text(DRIFTING, timeout=120_000)
    expect(card).to_contain_text("v2")
    shot(page, "deploy")
