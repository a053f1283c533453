"""Planning a batch: due models, no double scoring, joining runs in progress, forced reruns."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mldropd.batch.plan import due_models, plan_batch, retry_at
from mldropd.db import init_db, make_engine
from mldropd.records import Model, ModelRun, User
from mldropd.states import ModelRunStatus, Trigger

MONDAY = dt.date(2026, 11, 23)


def _engine(tmp_path: Path) -> Engine:
    engine = make_engine(tmp_path / "db.sqlite")
    init_db(engine)
    return engine


def _models(s: Session) -> list[Model]:
    user = User(email="a@b.c", token_hash="h")
    s.add(user)
    s.flush()
    models = [
        Model(owner_id=user.id, name=n, email="a@b.c", schedule=sch, status=st)
        for n, sch, st in [
            ("d", "daily", "active"),
            ("w", "weekly:mon", "active"),
            ("m", "monthly:23", "active"),
            ("p", "daily", "paused"),
            ("c", "0 6 * * 2-5", "active"),
        ]
    ]
    s.add_all(models)
    s.flush()
    return models


def test_due_models_by_schedule(tmp_path: Path) -> None:
    with Session(_engine(tmp_path)) as s:
        _models(s)
        assert {m.name for m in due_models(s, MONDAY)} == {"d", "w", "m"}
        assert {m.name for m in due_models(s, MONDAY + dt.timedelta(days=1))} == {"d", "c"}


def test_plan_skips_succeeded_and_joins_in_progress(tmp_path: Path) -> None:
    with Session(_engine(tmp_path)) as s:
        models = _models(s)
        due = due_models(s, MONDAY)
        batch, covered = plan_batch(s, MONDAY, Trigger.SCHEDULE, due)
        assert batch is not None and set(covered) == {m.id for m in due}
        assert all(r.status == ModelRunStatus.PENDING and r.attempt == 1 for r in covered.values())
        again, joined = plan_batch(s, MONDAY, Trigger.MANUAL, due)
        assert again is None and joined == covered  # a concurrent request joins the run
        first = covered[models[0].id]
        first.status = ModelRunStatus.SUCCEEDED
        for run in covered.values():
            if run is not first:
                run.status = ModelRunStatus.FAILED
        s.flush()
        retry, retried = plan_batch(s, MONDAY, Trigger.RETRY, due)
        assert retry is not None
        assert retried[models[0].id] is first  # never scored twice
        assert {r.attempt for m, r in retried.items() if m != models[0].id} == {2}
        forced, rerun = plan_batch(s, MONDAY, Trigger.MANUAL, [models[0]], force=True)
        assert forced is not None and rerun[models[0].id] is not first


def test_retry_rule() -> None:
    now = dt.datetime(2026, 11, 27, 6, 0, tzinfo=dt.UTC)
    assert retry_at(1, 3, 1800, now) == now + dt.timedelta(minutes=30)
    assert retry_at(3, 3, 1800, now) is None


def test_slow_run_is_flagged_against_the_model_median(tmp_path: Path) -> None:
    from mldropd.batch.run import _slow_warning
    from mldropd.records import BatchRun, ModelRun

    engine = _engine(tmp_path)
    with Session(engine) as s:
        model = _models(s)[0]
        batch = BatchRun(date=MONDAY, trigger="schedule")
        s.add(batch)
        s.flush()
        assert _slow_warning(s, model.id, 100.0, 3.0) is None  # no history yet
        for seconds in (2.0, 2.5, 3.0):
            s.add(
                ModelRun(
                    batch_id=batch.id,
                    model_id=model.id,
                    model_version=1,
                    date=MONDAY,
                    trigger="schedule",
                    status=ModelRunStatus.SUCCEEDED,
                    seconds=seconds,
                )
            )
        s.flush()
        assert _slow_warning(s, model.id, 7.0, 3.0) is None  # 7.0 < 3 x median 2.5
        warning = _slow_warning(s, model.id, 8.0, 3.0)
        assert warning == (
            "slow: 8.0 s is more than 3 times the median 2.5 s of the model's last 3 runs"
        )
        for run in s.exec(select(ModelRun)).all():
            run.seconds = run.seconds / 100  # sub-second runs: jitter, not news
        s.flush()
        assert _slow_warning(s, model.id, 0.08, 3.0) is None


def _finish(s: Session, run: ModelRun, status: ModelRunStatus) -> None:
    run.status = status
    s.flush()


def test_attempts_count_the_failure_episode_not_the_dates_history(tmp_path: Path) -> None:
    """Nine re-scorings, then failures: attempt 1, 2, 3 of 3; an explicit request starts over."""
    with Session(_engine(tmp_path)) as s:
        model = _models(s)[0]

        def plan(trigger: Trigger, force: bool = True) -> ModelRun:
            batch, covered = plan_batch(s, MONDAY, trigger, [model], force=force)
            assert batch is not None
            return covered[model.id]

        for _ in range(9):
            _finish(s, plan(Trigger.MANUAL), ModelRunStatus.SUCCEEDED)
        first = plan(Trigger.MANUAL)
        assert first.attempt == 1  # was 10 when every earlier run counted
        _finish(s, first, ModelRunStatus.FAILED)
        second = plan(Trigger.RETRY, force=False)
        assert second.attempt == 2
        _finish(s, second, ModelRunStatus.FAILED)
        third = plan(Trigger.RETRY, force=False)
        assert third.attempt == 3
        _finish(s, third, ModelRunStatus.FAILED)
        assert retry_at(third.attempt, 3, 1800, dt.datetime.now(dt.UTC)) is None
        again = plan(Trigger.BACKFILL)  # a person asks again: a new episode
        assert again.attempt == 1
        _finish(s, again, ModelRunStatus.FAILED)
        assert plan(Trigger.RETRY, force=False).attempt == 2


def test_a_success_ends_the_episode_of_scheduled_runs(tmp_path: Path) -> None:
    with Session(_engine(tmp_path)) as s:
        model = _models(s)[0]
        for trigger, status, attempt in [
            (Trigger.SCHEDULE, ModelRunStatus.FAILED, 1),
            (Trigger.RETRY, ModelRunStatus.SUCCEEDED, 2),  # recovered on attempt 2
            (Trigger.CATCHUP, ModelRunStatus.FAILED, 1),  # after a success: a new episode
            (Trigger.RETRY, ModelRunStatus.FAILED, 2),
        ]:
            batch, covered = plan_batch(s, MONDAY, trigger, [model], force=True)
            assert batch is not None and covered[model.id].attempt == attempt, trigger
            _finish(s, covered[model.id], status)
