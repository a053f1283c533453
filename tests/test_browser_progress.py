"""A running batch in a real Chromium against a real daemon: the model page, the models table and
the dashboard show its phase and its rows count changing, refreshed by their HTMX polling; a
backfill (`mldropd run --from --to`, one job of three dates) shows its dates done of dates asked.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from mldropd import save_model
from tests.support.browser import RUN_TIMEOUT_MS, api_upload, shot
from tests.support.models import slow_model
from tests.support.wait import wait_for

pytestmark = pytest.mark.browser

SLOW_S = 0.5  # a batch of 100 rows takes half a second: 30 batches, 15 s of scoring


def _sign_in(tab: Any, url: str, token: str) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{url}/")
    tab.fill("#token", token)
    tab.click("button[type=submit]")
    expect(tab.get_by_role("heading", name="Deploy a model")).to_be_visible()


def test_a_running_batch_shows_its_phase_and_rows_on_every_page(
    page: Any,
    daemon: Callable[..., Any],
    make_user: Callable[..., str],
    tmp_path: Path,
    home: Path,
    feature_dates: list[dt.date],
) -> None:
    from playwright.sync_api import expect

    token = make_user("ann@example.com")
    served = daemon(MLDROPD_ENGINE__BATCH_ROWS="100")
    path = save_model(tmp_path / "slow.dill", pipeline=slow_model(SLOW_S), features=["f00"])
    model_id = api_upload(served.url, token, path)
    _sign_in(page, served.url, token)
    try:
        # The model page: Run now, then the phase and a rows count that moves by itself.
        page.goto(f"{served.url}/models/{model_id}")
        page.evaluate("window.__sameDocument = true")
        page.locator("#model-detail").get_by_role("button", name="Run now").click()
        now = page.locator("#now .run-progress")
        expect(now.locator(".phase")).to_have_text("scoring", timeout=RUN_TIMEOUT_MS)
        rows = now.locator(".rows")
        expect(rows).to_have_text(re.compile(r"^[\d,]+ of 3,000 rows$"))
        first = rows.text_content()
        expect(rows).not_to_have_text(first or "", timeout=10_000)  # the next poll moved it
        expect(now.locator(".rate")).to_contain_text("rows/s")
        expect(now.locator(".eta")).to_contain_text("left")
        expect(page.locator("#runs-table tr.run.running .run-progress .phase")).to_have_text(
            "scoring"
        )
        shot(page, "10-progress-model")

        # The models table and the dashboard agree, and keep refreshing while it runs.
        table = page.context.new_page()
        table.goto(f"{served.url}/models")
        cell = table.locator(f"#model-{model_id} .run-progress")
        expect(cell.locator(".phase")).to_have_text("scoring")
        counted = cell.locator(".rows").text_content()
        expect(cell.locator(".rows")).not_to_have_text(counted or "", timeout=10_000)
        board = page.context.new_page()
        board.goto(f"{served.url}/dashboard")
        expect(board.locator("#dashboard-table")).to_have_attribute("data-polling", "true")
        expect(board.locator(".last-run .run-progress .phase")).to_have_text(
            "scoring", timeout=10_000
        )
        shot(table, "11-progress-models")

        # Over: the progress goes, the badge says succeeded, on the same document.
        expect(page.locator("#now")).to_have_count(0, timeout=RUN_TIMEOUT_MS)
        expect(page.locator("#runs-table tr.run").first).to_have_class("run succeeded")
        assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
        expect(board.locator(".last-run .run-progress")).to_have_count(0, timeout=10_000)

        # A backfill of three dates as one job (the CLI): the dates done of the dates asked.
        first_day, last_day = feature_dates[0], feature_dates[-1]
        backfill = subprocess.Popen(
            [sys.executable, "-m", "mldropd", "run", "--from", str(first_day), "--to",
             str(last_day), "--model", str(model_id), "--quiet", "--config",
             str(home / "config.toml")],
            cwd=home,
            env={**os.environ, "MLDROPD_ENGINE__BATCH_ROWS": "300"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        try:
            dates = cell.locator(".dates")

            def planned() -> bool:
                got = httpx.get(
                    f"{served.url}/api/v1/models/{model_id}",
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
                return got.json()["active_run"] is not None

            wait_for(planned, timeout=60, what="the backfill to be planned")
            table.reload()  # a run is waiting: the table polls again
            expect(dates).to_have_text("0 of 3 dates done", timeout=RUN_TIMEOUT_MS)
            # The oldest date runs while the newest waits: the cell names the one running.
            expect(cell.locator(".run-date")).to_have_text(str(first_day))
            shot(table, "12-progress-backfill")
            for done in (1, 2):
                expect(dates).to_have_text(f"{done} of 3 dates done", timeout=RUN_TIMEOUT_MS)
            out, _ = backfill.communicate(timeout=300)
        finally:
            backfill.kill()
        assert backfill.returncode == 0, out
        expect(cell).to_have_count(0, timeout=10_000)
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print("daemon log tail:\n" + served.log.read_text()[-5000:])
        raise
