"""The web UI in a real Chromium (Debian's, driven by playwright) against a real daemon.

One user's whole journey: sign in, drop a broken file and read its errors, drop a real model
and see its card, run it and watch the badge change without a reload, read the DQ plots on
the model page, use the dashboard, pause and resume, delete. Screenshots of every page go to
test-artifacts/screenshots/; with MLDROPD_DOCS_SCREENSHOTS=1 the screenshots of docs/web-ui.md
(one of them is the README's picture) are also refreshed under docs/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import RUN_TIMEOUT_MS, SHOTS, WIDE, api_upload, drop, shot
from tests.support.home import today
from tests.support.wait import wait_for

pytestmark = pytest.mark.browser

NARROW = {"width": 390, "height": 844}


def api_run(url: str, token: str, model_id: int, day: dt.date) -> None:
    """Score a past date through the API and wait until it has succeeded."""
    headers = {"Authorization": f"Bearer {token}"}
    accepted = httpx.post(
        f"{url}/api/v1/models/{model_id}/runs",
        headers=headers,
        json={"date": day.isoformat()},
        timeout=30,
    )
    assert accepted.status_code == 202, accepted.text

    def finished() -> dict[str, Any] | None:
        run = httpx.get(
            f"{url}/api/v1/runs/{accepted.json()['run_id']}", headers=headers, timeout=10
        ).json()
        return run if run["status"] in ("succeeded", "failed") else None

    run = wait_for(finished, timeout=120, what=f"the API run for {day}")
    assert run["status"] == "succeeded", run


def test_deploy_run_inspect_and_delete_in_a_browser(
    page: Any,
    daemon: Callable[..., Any],
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("ann@example.com")
    served = daemon()
    try:
        journey(page, served.url, token, model_files)
    except BaseException:
        # What the page and the daemon looked like when it went wrong (shown by pytest).
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "failure.png"), full_page=True)
        print("daemon log tail:\n" + served.log.read_text()[-5000:])
        raise


def journey(page: Any, url: str, token: str, model_files: dict[str, Path]) -> None:
    """One user's way through every page, in the order a new user takes it."""
    from playwright.sync_api import expect

    # Sign in: every page sends an anonymous visitor to the sign-in form first.
    page.goto(f"{url}/")
    expect(page).to_have_url(re.compile(r"/login\?next=/$"))
    page.fill("#token", "not-a-token")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not valid")
    page.fill("#token", token)
    shot(page, "01-login")
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Deploy a model")).to_be_visible()

    # The schedule picker previews the schedule in words.
    page.select_option("#schedule-kind", "weekly")
    page.select_option("#schedule-weekday", "wed")
    expect(page.locator("#schedule-preview")).to_contain_text("every Wednesday")
    page.select_option("#schedule-kind", "cron")
    page.fill("#schedule-cron", "0 6 * * 9")
    expect(page.locator("#schedule-preview")).to_contain_text("day-of-week")

    # A broken file and a bad email: every problem, each next to what it concerns.
    page.fill("#email", "not-an-email")
    drop(page, b"not a pickle", "broken.dill")
    errors = page.locator("#upload-errors")
    expect(errors).to_be_visible()
    expect(errors.locator("li[data-field=file]")).not_to_have_count(0)
    expect(page.locator("#err-email")).not_to_be_empty()
    expect(page.locator("#schedule-preview [role=alert]")).to_contain_text("out of range")
    shot(page, "02-deploy-errors")

    # A real model: the card shows name, version, features, next run and the dry run.
    page.fill("#email", "ann.reports@example.com")
    page.select_option("#schedule-kind", "daily")
    expect(page.locator("#schedule-preview")).to_contain_text("every day")
    drop(page, model_files["lgbm"].read_bytes(), "churn_lgbm.dill")
    card = page.locator("#model-card")
    expect(card).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(card).to_contain_text("churn_lgbm")
    expect(card).to_contain_text("v1")
    expect(card.locator(".features-count")).to_have_text("12")
    expect(card.locator(".next-run")).to_have_text(re.compile(r"\d{4}-\d\d-\d\d"))
    expect(card.locator("svg.chart rect.bar")).to_have_count(20)
    expect(page.locator("#err-email")).to_be_empty()
    shot(page, "03-deploy", docs=True)
    model_id = int(card.get_attribute("data-model-id") or 0)

    # A first dated run through the API, so that today's run has a reference for its DQ; and a
    # second model in two versions, so that the table has a version to roll back to.
    yesterday = today() - dt.timedelta(days=1)
    api_run(url, token, model_id, yesterday)
    for _ in range(2):
        other_id = api_upload(url, token, model_files["logreg"])

    # Run now: the status badge changes to succeeded without reloading the page.
    page.click("nav >> text=My models")
    page.wait_for_load_state()  # htmx wires the buttons on DOMContentLoaded; before, they post
    row = page.locator(f"#model-{model_id}")
    expect(row.locator("[data-role=run-status]")).to_have_text("succeeded")
    page.evaluate("window.__sameDocument = true")
    row.get_by_role("button", name="Run now").click()
    badge = page.locator(f"#model-{model_id} [data-role=run-status]")
    expect(badge).to_have_text(re.compile("pending|running"))
    expect(page.locator("#models-table")).to_have_attribute("data-polling", "true")
    expect(badge).to_have_text("succeeded", timeout=RUN_TIMEOUT_MS)
    expect(page.locator(f"#model-{model_id} .last-run")).to_contain_text(today().isoformat())
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    expect(page.locator("#models-table")).not_to_have_attribute("data-polling", "true")
    expect(page.locator(f"#model-{model_id} .dq")).to_contain_text("PSI")
    expect(page.locator(f"#version-{other_id}")).to_have_value("2")
    shot(page, "04-models", docs=True)

    # The model page: PSI plot with a point and thresholds, histograms, runs, the report.
    page.click(f"#model-{model_id} a.name")
    psi = page.locator("#psi-chart svg")
    expect(psi).to_be_visible()
    expect(psi.locator("circle.dot.line")).to_have_count(1)
    expect(psi.locator("text.thr-label")).to_have_count(2)
    expect(page.locator("#auc-chart svg circle.dot.line")).to_have_count(1)
    expect(page.locator("#hist-chart svg polyline.ref")).to_have_count(1)
    expect(page.locator("#runs-table tr.run.succeeded")).to_have_count(2)
    for _ in range(30):  # the report is queued just after the run finishes
        if (
            "churn_lgbm" in (page.locator("#report").text_content() or "")
            and page.locator("#report pre.email").count()
        ):
            break
        page.wait_for_timeout(1000)
        page.reload()
    expect(page.locator("#report")).to_contain_text(f"mldropd: churn_lgbm scored {today()}")
    expect(page.locator("#report pre.email")).to_contain_text("PSI")
    shot(page, "05-model-detail", docs=True)

    # Pause and resume on the model page: its live region refreshes itself.
    detail = page.locator("#model-detail")
    detail.get_by_role("button", name="Pause").click()
    expect(detail.locator(".health")).to_have_text("paused")
    expect(detail.locator(".next-run")).to_have_text("paused")
    detail.get_by_role("button", name="Resume").click()
    expect(detail.locator(".health")).to_have_text("active")

    # The dashboard: a sparkline per model; the alerts filter swaps the table in place.
    page.click("nav >> text=Dashboard")
    expect(page.locator("tr[data-model=churn_lgbm] svg.spark")).to_be_visible()
    shot(page, "06-dashboard")
    dq_status = page.locator("tr[data-model=churn_lgbm]").get_attribute("data-dq")
    page.check("input[name=only]")
    expect(page).to_have_url(re.compile(r"only=alerts"))
    if dq_status == "alert":
        expect(page.locator("tr[data-model=churn_lgbm]")).to_be_visible()
    else:
        expect(page.locator("#dashboard-table")).to_contain_text("No alerts")

    # Pause and resume from the table.
    page.click("nav >> text=My models")
    health = page.locator(f"#model-{model_id} .health")
    row.get_by_role("button", name="Pause").click()
    expect(health).to_have_text("paused")
    expect(page.locator(f"#model-{model_id} .next-run")).to_have_text("paused")
    row.get_by_role("button", name="Resume").click()
    expect(health).to_have_text("active")

    # A narrow window: the table becomes labelled cards, the deploy form stacks.
    page.set_viewport_size(NARROW)
    shot(page, "07-models-narrow")
    page.click("nav >> text=Deploy")
    shot(page, "08-deploy-narrow")
    page.set_viewport_size(WIDE)

    # Delete, after confirming.
    page.click("nav >> text=My models")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(row).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"#model-{other_id}").get_by_role("button", name="Delete").click()
    expect(page.locator("#models-table")).to_contain_text("No models yet")
    shot(page, "09-models-empty")
    gone = httpx.get(
        f"{url}/api/v1/models/{model_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert gone.status_code == 404


# A user's choice made before htmx has wired the page (a fast click, a slow machine): run just
# before dropzone.js (its listeners not there yet) or just after it (htmx not yet ready).
EARLY_CHOICE = """
;(function () {
  const kind = document.getElementById("schedule-kind");
  if (!kind) return;
  kind.value = "weekly";
  kind.dispatchEvent(new Event("change"));
})();
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_schedule_chosen_before_htmx_is_ready_is_still_previewed(
    page: Any, daemon: Callable[..., Any], make_user: Callable[..., str], when: str
) -> None:
    from playwright.sync_api import expect

    token = make_user("ann@example.com")
    served = daemon()

    def early_choice(route: Any) -> None:
        original = route.fetch()
        script = original.text()
        body = EARLY_CHOICE + script if when == "before" else script + EARLY_CHOICE
        route.fulfill(response=original, body=body)

    page.route("**/static/dropzone.js", early_choice)
    page.goto(f"{served.url}/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    expect(page.locator("#schedule-kind")).to_have_value("weekly")
    expect(page.locator("#schedule-weekday")).to_be_visible()
    expect(page.locator("#schedule-preview")).to_contain_text("every Monday")
    assert page.locator("#schedule").input_value() == "weekly:mon"
