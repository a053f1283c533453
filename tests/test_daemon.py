"""A real `mldropd serve` process: jobs persist across restarts, a daemon killed mid-batch
resumes it and scores exactly once, and missed sweep dates are caught up (or skipped)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pytest

from mldropd import save_model
from tests.support.home import today
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow


def _token(home: Path) -> str:
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mldropd",
            "users",
            "add",
            "ann@example.com",
            "--config",
            str(home / "config.toml"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def _upload(url: str, token: str, path: Path, **form: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        response = httpx.post(
            f"{url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (path.name, f)},
            data=form,
            timeout=120,
        )
    assert response.status_code == 201, response.text
    return response.json()


def _runs(url: str, token: str, **params: Any) -> list[dict[str, Any]]:
    return httpx.get(
        f"{url}/api/v1/runs",
        params=params,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    ).json()


def _jobs(home: Path) -> dict[str, float]:
    with sqlite3.connect(home / "mldropd.db") as con:
        return dict(con.execute("SELECT id, next_run_time FROM apscheduler_jobs"))


def test_jobs_persist_across_restart(home: Path, daemon: Callable[..., Any]) -> None:
    first = daemon()
    assert httpx.get(f"{first.url}/readyz").status_code == 200
    jobs = _jobs(home)
    assert {"sweep", "deliver-outbox"} <= set(jobs)
    first.kill()
    second = daemon()
    assert _jobs(home)["sweep"] == jobs["sweep"]  # not re-added: next fire time unchanged
    ready = httpx.get(f"{second.url}/readyz").json()
    assert ready["checks"]["scheduler"] == "ok"


def _slow_model(path: Path) -> Path:
    def slow(frame: Any) -> Any:
        import time

        if len(frame) > 500:
            time.sleep(1.5)
        return np.asarray(frame["f00"], dtype=float) * 0.0 + 0.25

    return save_model(path, pipeline=slow, features=["f00"], name="slow")


def test_daemon_killed_mid_batch_scores_exactly_once(
    home: Path, daemon: Callable[..., Any], tmp_path: Path
) -> None:
    (home / "config.toml").write_text(
        (home / "config.toml")
        .read_text()
        .replace("[engine]\n", "[engine]\nvalidate_sample_rows = 500\n")
    )
    token = _token(home)
    first = daemon()
    model = _upload(first.url, token, _slow_model(tmp_path / "slow.dill"))
    httpx.post(
        f"{first.url}/api/v1/models/{model['id']}/runs",
        json={},
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    wait_for(
        lambda: any(r["status"] == "running" for r in _runs(first.url, token)),
        timeout=60,
        what="the run to start",
    )
    first.kill(9)  # the daemon dies; its batch job is orphaned mid-scoring
    second = daemon()
    day = today().isoformat()
    done = wait_for(
        lambda: [
            r for r in _runs(second.url, token, date=day) if r["status"] in ("succeeded", "failed")
        ],
        timeout=120,
        what="the resumed run",
    )
    assert [r["status"] for r in done] == ["succeeded"], done
    assert all(r["status"] != "running" for r in _runs(second.url, token))
    part = home / "scores" / f"dt={day}" / f"model={model['id']}"
    assert [p.name for p in part.iterdir()] == ["part-0.parquet"]
    rows = duckdb.sql(
        f"SELECT count(*), count(DISTINCT entity_id) FROM read_parquet('{part}/*.parquet')"
    ).fetchall()[0]
    assert rows == (3000, 3000)
    staging = home / ".scores.staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_catch_up_after_downtime(
    home: Path, daemon: Callable[..., Any], model_files: dict[str, Path]
) -> None:
    token = _token(home)
    env = {"MLDROPD_SCHEDULER__SWEEP": "0 0 * * *"}  # the sweep time has passed today
    first = daemon(**env)
    model = _upload(first.url, token, model_files["lgbm"])
    first.kill()
    with sqlite3.connect(home / "mldropd.db") as con:  # the daemon was last up 5 days ago
        con.execute("DELETE FROM sweep_log")
        con.execute(
            "INSERT INTO sweep_log (date, status, reason, created_at) VALUES (?, 'planned', '', ?)",
            ((today() - dt.timedelta(days=5)).isoformat(), dt.datetime.now(dt.UTC).isoformat()),
        )
    second = daemon(**env)
    expected = [(today() - dt.timedelta(days=d)).isoformat() for d in (2, 1, 0)]

    def all_done() -> list[dict[str, Any]] | None:
        runs = _runs(second.url, token, model_id=model["id"])
        finished = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return runs if len(finished) == 3 == len(runs) else None

    runs = sorted(
        wait_for(all_done, timeout=180, what="three caught-up runs"), key=lambda r: r["id"]
    )
    assert [r["date"] for r in runs] == expected  # oldest first, each date once
    assert [r["trigger"] for r in runs] == ["catchup", "catchup", "schedule"]
    assert {r["status"] for r in runs} == {"succeeded"}
    with sqlite3.connect(home / "mldropd.db") as con:
        skipped = dict(con.execute("SELECT date, reason FROM sweep_log WHERE status='skipped'"))
    assert sorted(skipped) == [(today() - dt.timedelta(days=d)).isoformat() for d in (4, 3)]
    assert all("catch-up window of 2 days" in reason for reason in skipped.values())


def test_sigterm_stops_after_grace_and_the_next_start_resumes(
    home: Path, daemon: Callable[..., Any], tmp_path: Path
) -> None:
    (home / "config.toml").write_text(
        (home / "config.toml")
        .read_text()
        .replace("[engine]\n", "[engine]\nvalidate_sample_rows = 500\n")
    )
    token = _token(home)
    first = daemon(MLDROPD_SCHEDULER__SHUTDOWN_GRACE_S="1")
    model = _upload(first.url, token, _slow_model(tmp_path / "slow.dill"))
    httpx.post(
        f"{first.url}/api/v1/models/{model['id']}/runs",
        json={},
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
    )
    wait_for(
        lambda: any(r["status"] == "running" for r in _runs(first.url, token)),
        timeout=60,
        what="the run to start",
    )
    first.stop()  # SIGTERM: the batch gets 1 s, then is stopped to be resumed
    assert first.proc is not None and first.proc.returncode is not None
    ours = [
        p
        for p in Path("/proc").glob("[0-9]*/cmdline")
        if _readable(p)
        and b"mldropd.jobs.forkserver" in p.read_bytes()  # the fork server, its jobs and hosts
        and str(home).encode() in p.read_bytes()
    ]
    assert not ours, "the fork server, a batch job or a model host outlived the daemon"
    second = daemon()
    day = today().isoformat()
    done = wait_for(
        lambda: [
            r for r in _runs(second.url, token, date=day) if r["status"] in ("succeeded", "failed")
        ],
        timeout=120,
        what="the resumed run",
    )
    assert [r["status"] for r in done] == ["succeeded"]


def _readable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return False
    return True
