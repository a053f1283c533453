"""The progress recorder (mldropd.batch.progress): its rate and time-left estimates, its
throttle, and that a busy database skips an update instead of stalling the scoring pass."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from mldropd.batch import progress as progress_module
from mldropd.batch.progress import BatchProgress, RateMeter
from mldropd.db import init_db, make_engine
from mldropd.records import BatchRun, Model, ModelRun, User
from mldropd.states import ModelRunStatus, Phase, RunStatus, Trigger

DAY = dt.date(2026, 11, 23)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Engine:
    engine = make_engine(tmp_path / "db.sqlite")
    init_db(engine)
    return engine


def _batch(db: Engine, statuses: list[ModelRunStatus]) -> tuple[int, list[int]]:
    """A running batch with one model run per status."""
    with Session(db) as s:
        user = User(email="a@b.c", token_hash="h")
        s.add(user)
        s.flush()
        batch = BatchRun(date=DAY, trigger=Trigger.MANUAL, status=RunStatus.RUNNING)
        s.add(batch)
        s.flush()
        runs = []
        for i, status in enumerate(statuses):
            model = Model(owner_id=user.id or 0, name=f"m{i}", email="a@b.c")
            s.add(model)
            s.flush()
            run = ModelRun(
                batch_id=batch.id or 0,
                model_id=model.id or 0,
                model_version=1,
                date=DAY,
                trigger=Trigger.MANUAL,
                status=status,
            )
            s.add(run)
            runs.append(run)
        s.commit()
        return batch.id or 0, [r.id or 0 for r in runs]


def _run(db: Engine, run_id: int) -> ModelRun:
    with Session(db) as s:
        run = s.get(ModelRun, run_id)
        assert run is not None
        return run


def test_rate_is_measured_over_the_recent_window_and_gives_the_time_left() -> None:
    meter = RateMeter(window_s=10.0)
    assert meter.rate() is None and meter.eta(1000) is None  # one sample is no rate
    for second in range(21):  # 1,000 rows a second for 20 s
        meter.add(float(second), second * 1000)
    assert meter.rate() == pytest.approx(1000.0)
    assert meter.eta(5000) == pytest.approx(5.0)
    assert meter.eta(0) == 0.0
    for second in range(21, 41):  # then 100 rows a second: the window forgets the fast part
        meter.add(float(second), 20_000 + (second - 20) * 100)
    assert meter.rate() == pytest.approx(100.0)
    assert meter.eta(1000) == pytest.approx(10.0)
    meter.add(41.0, 50)  # a count that goes back (a new pass) starts a new measurement
    assert meter.rate() is None


def test_scoring_progress_is_recorded_on_the_busy_runs_with_rate_and_time_left(
    db: Engine,
) -> None:
    batch_id, (a, b, done) = _batch(
        db, [ModelRunStatus.RUNNING, ModelRunStatus.RUNNING, ModelRunStatus.SUCCEEDED]
    )
    clock = Clock()
    recorder = BatchProgress(db, batch_id, dates=(2, 5), clock=clock)
    recorder.phase(Phase.STARTING)
    recorder.totals({a: 10_000, b: 9_000})
    recorder("reading", {})
    for step in range(1, 5):  # 1,000 rows every 0.5 s: 2,000 rows a second
        clock.now += 0.5
        recorder("scoring", {a: step * 1000, b: step * 1000})
    run = _run(db, a)
    assert (run.phase, run.rows_done, run.rows_total) == ("scoring", 4000, 10_000)
    assert run.rows_per_s == pytest.approx(2000.0)
    assert run.eta_s == pytest.approx(3.0)  # 6,000 rows left at 2,000 a second
    assert _run(db, b).eta_s == pytest.approx(2.5)  # its key policy keeps fewer rows
    assert (run.dates_done, run.dates_total) == (2, 5)
    with Session(db) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None and batch.phase == "scoring"
    untouched = _run(db, done)  # a finished run keeps what it had
    assert untouched.phase is None and untouched.rows_done is None

    # DQ: the time left is the mean time per model checked so far times the models left.
    recorder.scored({a: 10_000, b: 9_000})
    recorder.checking(0, 4)
    clock.now += 3.0
    recorder.checking(1, 4)
    run = _run(db, a)
    assert (run.phase, run.rows_done) == ("dq", 10_000)
    assert run.eta_s == pytest.approx(9.0)
    assert run.rows_per_s == pytest.approx(2000.0)  # the scoring rate is kept
    recorder.close()


def test_row_counts_are_written_a_few_times_a_second_at_most(db: Engine) -> None:
    batch_id, (a,) = _batch(db, [ModelRunStatus.RUNNING])
    clock = Clock()
    recorder = BatchProgress(db, batch_id, clock=clock)
    recorder("scoring", {a: 0})  # a new phase: written at once
    assert recorder.writes == 1
    for step in range(1, 201):  # 200 batches in 2 s (one every 10 ms)
        clock.now += 0.01
        recorder("scoring", {a: step * 100})
    assert recorder.writes <= 1 + 2 / progress_module.MIN_INTERVAL_S  # not 201
    assert _run(db, a).rows_done >= 19_500  # and what was written is recent
    recorder("writing", {a: 20_000})  # a phase change is never held back
    assert _run(db, a).phase == "writing" and _run(db, a).rows_done == 20_000
    recorder.close()


def test_a_busy_database_skips_an_update_instead_of_stalling_the_scoring(db: Engine) -> None:
    batch_id, (a,) = _batch(db, [ModelRunStatus.RUNNING])
    clock = Clock()
    recorder = BatchProgress(db, batch_id, clock=clock)
    recorder("scoring", {a: 1000})
    other = sqlite3.connect(str(db.url.database), timeout=30, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        clock.now += 1.0
        started = time.monotonic()
        recorder("scoring", {a: 2000})
        waited = time.monotonic() - started
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert waited < 2.0, f"the scoring pass waited {waited:.1f} s for the progress write"
    assert _run(db, a).rows_done == 1000  # skipped...
    clock.now += 1.0
    recorder("scoring", {a: 3000})
    assert _run(db, a).rows_done == 3000  # ...and caught up by the next write
    recorder.close()
