"""`mldropd run` as scripts and operators use it at the same time as others: joining runs in
progress, concurrent overlapping runs, --plan-only for spark-submit, refused batch ids; the rules
and the audit row of a run request, as the API has them."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session, select

from mldropd import save_model
from mldropd.audit import cli_actor
from mldropd.auth import create_user
from mldropd.db import init_db, make_engine, session_scope
from mldropd.errors import ValidationFailed
from mldropd.intake import UploadForm, register_file
from mldropd.records import AuditEvent, BatchRun, Model, ModelRun, ModelVersion
from mldropd.services.runs import MAX_DAYS, run_dates
from mldropd.settings import Settings
from mldropd.store import make_store
from tests.support.home import today
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow  # the CLI and batch jobs in real processes


def _slow_model() -> Any:
    """Built in a function, so dill stores it by value (as a notebook function)."""

    def slow(frame: Any) -> Any:
        import time

        if len(frame) > 500:
            time.sleep(1.0)  # three batches of 1,000 rows: about 3 s of scoring
        return np.full(len(frame), 0.25)

    return slow


@pytest.fixture
def models(settings: Settings, model_files: dict[str, Path], tmp_path: Path) -> list[int]:
    db = make_engine(settings.database.path)
    init_db(db)
    user = create_user(db, "ann@example.com")[0]
    slow = save_model(tmp_path / "slow.dill", pipeline=_slow_model(), features=["f00"], name="slow")
    ids = []
    for path in (slow, model_files["logreg"]):
        model, _ = register_file(
            db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
        )
        ids.append(model.id)
    return ids


def _cli(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "mldropd", *args, "--config", str(home / "config.toml")]


def _batch_status(settings: Settings, batch_id: int) -> str | None:
    with Session(make_engine(settings.database.path)) as s:
        batch = s.get(BatchRun, batch_id)
        return batch.status if batch else None


def test_overlapping_cli_runs_join_and_both_report_the_truth(
    home: Path, settings: Settings, models: list[int]
) -> None:
    slow, logreg = models
    day = today().isoformat()
    args = ["run", "--date", day, "--model", str(slow), "--model", str(logreg)]
    first = subprocess.Popen(_cli(home, *args), stdout=subprocess.PIPE, text=True, cwd=home)
    try:

        def running() -> bool:
            with Session(make_engine(settings.database.path)) as s:
                found = s.exec(select(BatchRun).where(BatchRun.status == "running")).first()
                return found is not None

        wait_for(running, timeout=60, what="the first run's batch to start")
        second = subprocess.run(
            _cli(home, *args), capture_output=True, text=True, timeout=240, cwd=home
        )
        out, _ = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, out
    assert second.returncode == 0, second.stdout + second.stderr
    assert "joined batch 1" in second.stdout
    for name, model_id in (("slow", slow), ("churn_logreg", logreg)):
        assert f"{name} (id {model_id}) {day}: succeeded, 3000 rows" in out
        assert f"{name} (id {model_id}) {day}: succeeded (joined batch 1), 3000 rows" in (
            second.stdout
        )
    with Session(make_engine(settings.database.path)) as s:
        runs = s.exec(select(ModelRun)).all()
    assert [(r.model_id, r.status) for r in runs] == [(slow, "succeeded"), (logreg, "succeeded")]


def test_plan_only_then_the_batch_job_and_refused_ids(
    home: Path, settings: Settings, models: list[int]
) -> None:
    slow = models[0]
    day = today().isoformat()
    planned = subprocess.run(
        _cli(home, "run", "--plan-only", "--date", day, "--model", str(slow)),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=home,
    )
    assert planned.returncode == 0, planned.stderr
    batch_id = int(planned.stdout.strip())  # the id alone on stdout, for scripts
    assert f"planned batch {batch_id} for {day}" in planned.stderr
    assert "spark-submit --master <URL>" in planned.stderr and "score_batch.py" in planned.stderr
    assert _batch_status(settings, batch_id) == "pending"
    job = [sys.executable, "-m", "mldropd.jobs.score_batch", str(home / "config.toml")]
    started = subprocess.Popen(
        [*job, str(batch_id), "--no-retries"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for(lambda: _batch_status(settings, batch_id) == "running", timeout=60, what="run")
        twice = subprocess.run([*job, str(batch_id)], capture_output=True, text=True, timeout=60)
        assert started.wait(timeout=120) == 0
    finally:
        started.kill()
    assert twice.returncode == 2
    assert f"batch run {batch_id} ({day}) is already running in process" in twice.stderr
    assert "Traceback" not in twice.stderr and twice.stderr.count("\n") == 1
    assert _batch_status(settings, batch_id) == "succeeded"
    again = subprocess.run([*job, str(batch_id)], capture_output=True, text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr == (
        f"mldropd: batch run {batch_id} ({day}) already finished (succeeded); a batch runs once: "
        f"plan a new one with `mldropd run --plan-only --date {day}`\n"
    )
    missing = subprocess.run([*job, "999"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "batch run 999 does not exist" in missing.stderr


def _run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_cli(home, *args), capture_output=True, text=True, timeout=120, cwd=home)


def test_run_refuses_future_dates_and_long_backfills(home: Path, settings: Settings) -> None:
    later = today() + dt.timedelta(days=2)  # a day of margin: the test may cross midnight

    def refused(*args: str) -> str:
        done = _run(home, "run", "--plan-only", *args)
        assert done.returncode == 2, done.stdout + done.stderr
        return " ".join(done.stderr.split())  # as one line, however the terminal wraps it

    said = refused("--date", later.isoformat())
    assert "--date" in said and f"{later} is in the future" in said, said
    said = refused("--from", today().isoformat(), "--to", later.isoformat())
    assert "--to" in said and f"{later} is in the future" in said, said
    said = refused("--from", (today() - dt.timedelta(days=MAX_DAYS + 1)).isoformat())
    assert "--from" in said and f"a backfill covers at most {MAX_DAYS} days" in said, said
    with Session(make_engine(settings.database.path)) as s:
        assert s.exec(select(BatchRun)).first() is None  # nothing planned


def test_run_dates_bounds() -> None:
    """The rule behind every door: today or past dates, at most MAX_DAYS of them."""
    day = dt.date(2026, 3, 1)
    year = run_dates(day, first=day - dt.timedelta(days=MAX_DAYS - 1))
    assert len(year) == MAX_DAYS and year[-1] == day
    for asked in (
        {"first": day - dt.timedelta(days=MAX_DAYS)},
        {"day": day + dt.timedelta(days=1)},
        {"first": day, "last": day + dt.timedelta(days=1)},
    ):
        with pytest.raises(ValidationFailed):
            run_dates(day, **asked)


def test_cli_run_request_is_audited_in_its_transaction(home: Path, settings: Settings) -> None:
    """`mldropd run` writes its run.request audit rows with the plan: if the audit log refuses
    the row, nothing is planned either."""
    engine = make_engine(settings.database.path)
    init_db(engine)
    owner = create_user(engine, "ann@example.com")[0]
    with session_scope(engine) as s:
        model = Model(owner_id=owner.id or 0, name="alpha", email=owner.email)
        s.add(model)
        s.flush()
        model_id = model.id or 0
        s.add(
            ModelVersion(
                model_id=model_id,
                version=1,
                artifact_key="x/alpha",
                sha256="0" * 64,
                size=1,
                features=["f00"],
                contract={},
            )
        )
    day = (today() - dt.timedelta(days=1)).isoformat()
    args = ("run", "--plan-only", "--date", day, "--model", str(model_id))
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_event "
            "BEGIN SELECT RAISE(ABORT, 'the audit log refuses rows'); END"
        )
    refused = _run(home, *args)
    assert refused.returncode != 0 and "the audit log refuses rows" in refused.stderr
    with Session(engine) as s:
        assert s.exec(select(BatchRun)).first() is None
        assert s.exec(select(ModelRun)).first() is None
    with engine.begin() as c:
        c.exec_driver_sql("DROP TRIGGER refuse_audit")
    planned = _run(home, *args)
    assert planned.returncode == 0, planned.stderr
    batch_id = int(planned.stdout.strip())
    with Session(engine) as s:
        (run,) = s.exec(select(ModelRun)).all()
        (event,) = s.exec(select(AuditEvent).where(AuditEvent.action == "run.request")).all()
    assert run.batch_id == batch_id
    assert (event.actor, event.target) == (cli_actor(), f"model:{model_id}")
    assert event.detail == {"run_id": run.id, "date": day, "trigger": "backfill"}
