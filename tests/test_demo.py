"""The demo home `make run` serves: 30 days of history made by the daemon itself, with its
stories (a drift into warn and alert, a failed run retried, a paused model) and a report e-mail
for each. Built once per module with fewer rows, then read through the API and the outbox."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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
from tests.conftest import Daemon, free_port

DEMO_ROWS = 3000  # customers per day: a fifth of `make run`'s, same stories


def demo(home: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mldropd", "demo", "--dir", str(home), "--no-serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def token_of(done: subprocess.CompletedProcess[str]) -> str:
    return next(w for w in done.stdout.split() if w.startswith("mld_"))


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("demo") / "home"
    done = demo(home, "--port", str(free_port()), "--rows", str(DEMO_ROWS))
    assert done.returncode == 0, done.stderr[-5000:]
    assert "History built in" in done.stderr
    return home, token_of(done)


@pytest.fixture(scope="module")
def api(demo_home: tuple[Path, str]) -> Iterator[Any]:
    """The demo home served by a real `mldropd serve`; an httpx client signed in as its admin."""
    home, token = demo_home
    served = Daemon(home).start()
    try:
        with httpx.Client(
            base_url=served.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            yield client
    finally:
        served.kill(15)


def by_name(api: Any) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in api.get("/api/v1/models").json()}


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
    assert runs[1]["rows"] == DEMO_ROWS
    every_run = api.get("/api/v1/runs", params={"model_id": model["id"]}).json()
    assert len(every_run) == DAYS + 1  # one a day, and the retry


def test_the_paused_model_stops_after_its_warning(api: Any) -> None:
    model = by_name(api)[PAUSED]
    runs = api.get("/api/v1/runs", params={"model_id": model["id"]}).json()
    assert len(runs) == PAUSE_AFTER + 1 and {r["status"] for r in runs} == {"succeeded"}
    last = max(dt.date.fromisoformat(r["date"]) for r in runs)
    assert model["last_run"]["date"] == last.isoformat()
    assert model["next_run_date"] is None
    dq = api.get(f"/api/v1/models/{model['id']}/dq").json()
    assert max(dq, key=lambda d: d["date"])["status"] == "warn"


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


def test_a_second_start_keeps_the_history(demo_home: tuple[Path, str], api: Any) -> None:
    home, _ = demo_home
    before = len(api.get("/api/v1/runs").json())
    again = demo(home, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Scoring 30 days" not in again.stderr
    fresh = httpx.get(
        f"{api.base_url}/api/v1/runs", headers={"Authorization": f"Bearer {token_of(again)}"}
    )
    assert fresh.status_code == 200 and len(fresh.json()) == before


def test_a_home_without_a_finished_history_is_refused(tmp_path: Path) -> None:
    """A database but no history mark (interrupted, or an older demo): said, nothing built."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "mldropd.db").write_bytes(b"")
    done = demo(home, timeout=120)
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
