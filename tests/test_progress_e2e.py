"""Progress of long work through the doors users use: the API's run JSON while a slow batch
scores, `mldropd run` on a terminal (a backfill under a pseudo-terminal), and its --json."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from mldropd import save_model
from mldropd.auth import create_user
from mldropd.db import init_db, make_engine
from mldropd.intake import UploadForm, register_file
from mldropd.settings import Settings
from mldropd.store import make_store
from tests.support.home import N_ENTITIES, today
from tests.support.http import bearer
from tests.support.models import slow_model
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow  # batch jobs and `mldropd run` in real processes

ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][A-Z0-9])")


def _failing() -> Any:
    """Passes its dry run at upload (1,000 rows), fails on the CLI tests' batches of 500."""

    def broken(frame: Any) -> Any:
        if len(frame) == 500:
            raise ValueError("this model fails on batches of 500 rows")
        return np.full(len(frame), 0.5)

    return broken


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.engine.batch_rows = 100  # 30 batches of the 3,000-row slice
    return settings


def test_the_run_json_carries_phase_rows_rate_and_time_left_while_it_scores(
    live_client: TestClient[Any], make_user: Callable[..., str], tmp_path: Path
) -> None:
    token = make_user("ann@example.com")
    path = save_model(
        tmp_path / "slow.dill", pipeline=slow_model(0.25), features=["f00"], name="slow"
    )
    with open(path, "rb") as f:
        uploaded = live_client.post(
            "/api/v1/models", headers=bearer(token), files={"file": ("slow.dill", f)}
        )
    assert uploaded.status_code == 201, uploaded.text
    model_id = uploaded.json()["id"]
    accepted = live_client.post(f"/api/v1/models/{model_id}/runs", headers=bearer(token), json={})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]

    seen: list[dict[str, Any]] = []
    active: list[dict[str, Any]] = []

    def finished() -> bool:
        run = live_client.get(f"/api/v1/runs/{run_id}", headers=bearer(token)).json()
        seen.append(run)
        if run["phase"] == "scoring" and len(active) < 3:
            model = live_client.get(f"/api/v1/models/{model_id}", headers=bearer(token)).json()
            active.append(model["active_run"])
        return run["status"] in ("succeeded", "failed")

    wait_for(finished, timeout=180, interval=0.1, what="the slow run")
    final = seen[-1]
    assert final["status"] == "succeeded", final
    phases = [r["phase"] for r in seen]
    assert "scoring" in phases, phases
    assert set(phases) <= {None, "starting", "reading", "scoring", "writing", "dq", "report"}
    scoring = [r for r in seen if r["phase"] == "scoring"]
    counts = [r["rows_done"] for r in scoring]
    assert counts == sorted(counts), "rows done went backwards"
    assert len(set(counts)) >= 3, f"the count did not move while scoring: {counts}"
    assert all(r["rows_total"] == N_ENTITIES for r in scoring)
    middle = [r for r in scoring if 0 < r["rows_done"] < N_ENTITIES and r["rows_per_s"]]
    assert middle, scoring
    # 100 rows every 0.25 s: about 400 rows a second, and the time left follows from it.
    assert 100 < middle[-1]["rows_per_s"] < 1000, middle[-1]
    left = (N_ENTITIES - middle[-1]["rows_done"]) / middle[-1]["rows_per_s"]
    assert middle[-1]["eta_s"] == pytest.approx(left, rel=0.05, abs=0.2)
    assert active and active[0]["id"] == run_id and active[0]["phase"] == "scoring"
    # Over: no phase, no time left; the rows written are the run's rows.
    assert final["phase"] is None and final["eta_s"] is None
    assert final["rows_done"] == final["rows"] == final["rows_total"] == N_ENTITIES
    model = live_client.get(f"/api/v1/models/{model_id}", headers=bearer(token)).json()
    assert model["active_run"] is None
    assert model["last_run"]["id"] == run_id and model["last_run"]["rows_done"] == N_ENTITIES
    # The OpenAPI document shows the fields.
    schema = live_client.get("/schema/openapi.json").json()["components"]["schemas"]
    fields = schema["RunOut"]["properties"]
    for name in ("phase", "rows_done", "rows_total", "rows_per_s", "eta_s", "dates_done"):
        assert name in fields, name
    assert "scoring" in schema["Phase"]["enum"]


# -- the command line ------------------------------------------------------------------------------
@pytest.fixture
def models(settings: Settings, tmp_path: Path) -> dict[str, int]:
    """A slow model (0.3 s a batch) and one that fails when scoring, registered as uploads are."""
    db = make_engine(settings.database.path)
    init_db(db)
    user = create_user(db, "ann@example.com")[0]
    ids = {}
    for name, pipeline in (("slow", slow_model(0.3)), ("broken", _failing())):
        path = save_model(tmp_path / f"{name}.dill", pipeline=pipeline, features=["f00"], name=name)
        model, _ = register_file(
            db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
        )
        assert model.id is not None
        ids[name] = model.id
    db.dispose()
    return ids


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mldropd", "run", *args, "--config", str(home / "config.toml")]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "MLDROPD_ENGINE__BATCH_ROWS": "500", **extra}


def _in_terminal(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[int, str]:
    """Run argv on a pseudo-terminal of 160 x 50; its exit code and everything it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    # The terminal's size, not one inherited from the test runner (pytest-xdist sets COLUMNS).
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, env=env, start_new_session=True
    )
    os.close(slave)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout} s:\n{shown.decode()[-3000:]}")
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed, the command is over
                break
            if not data:
                break
            shown += data
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(timeout=30), shown.decode("utf-8", "replace")


def test_a_backfill_on_a_terminal_shows_the_dates_advance_and_the_final_table(
    home: Path, models: dict[str, int], feature_dates: list[dt.date]
) -> None:
    first, last = feature_dates[0], feature_dates[-1]
    argv = _cli(home, "--from", str(first), "--to", str(last), "--model", str(models["slow"]))
    code, shown = _in_terminal(argv, home, _env(TERM="xterm-256color"), timeout=300)
    text = ANSI.sub("", shown).replace("\r", "\n")
    assert code == 0, text[-3000:]
    # The live display: the dates counter advances, a date shows its rows, rate and time left.
    marks = [text.find(f"{n} of 3 dates done") for n in range(3)]
    assert all(m >= 0 for m in marks) and marks == sorted(marks), text[-3000:]
    assert re.search(r"scoring\s.*?[\d,]+ of 3,000 rows · [\d,.]+ rows/s", text), text[-3000:]
    # The final table: one row per model and date, with status, rows, time and DQ.
    table = text[text.rfind("Model") :]
    bar = r"[\s│]+"
    for day in feature_dates:
        cells = [rf"slow \(id {models['slow']}\)", str(day), "succeeded", "3,000", r"[\d.]+ s"]
        assert re.search(bar.join(cells) + bar + "(ok|warn|alert)", table), table


def test_json_output_for_scripts_and_the_exit_code(
    home: Path, models: dict[str, int], feature_dates: list[dt.date]
) -> None:
    day = str(today())
    args = ["--date", day, "--model", str(models["slow"]), "--model", str(models["broken"])]
    done = subprocess.run(
        _cli(home, *args, "--json"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
        env=_env(),
    )
    assert done.returncode == 1, done.stderr[-3000:]  # a model failed: exit code 1, as before
    document = json.loads(done.stdout)  # stdout is the JSON document alone
    assert document["dates"] == [day] and document["failed"] == 1
    runs = {r["model"]: r for r in document["runs"]}
    slow, broken = runs["slow"], runs["broken"]
    assert (slow["status"], slow["rows"], slow["date"]) == ("succeeded", N_ENTITIES, day)
    assert slow["model_id"] == models["slow"] and slow["seconds"] > 0 and not slow["joined"]
    assert slow["dq"] is not None and slow["dq"]["status"] in ("ok", "warn", "alert")
    assert broken["status"] == "failed" and "fails on batches of 500 rows" in broken["error"]

    # Not a terminal, without --json: a line per date done, then one per model (plain counts).
    again = subprocess.run(
        _cli(home, "--date", day, "--model", str(models["slow"])),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
        env=_env(),
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"[1/1] {day}: 1 succeeded, 0 failed, 1 of 1 dates done" in again.stdout
    assert f"slow (id {models['slow']}) {day}: succeeded, 3000 rows in " in again.stdout
    assert "\x1b[" not in again.stdout  # no terminal codes in a pipe
    quiet = subprocess.run(
        _cli(home, "--date", day, "--model", str(models["slow"]), "--quiet"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=home,
        env=_env(),
    )
    assert quiet.returncode == 0 and "[1/1]" not in quiet.stdout
    assert quiet.stdout.startswith(f"slow (id {models['slow']}) {day}: succeeded, 3000 rows")
