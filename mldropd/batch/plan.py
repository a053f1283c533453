"""Plan a batch: which models to score for a date, as pending model runs of one batch run."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable

from sqlalchemy import text
from sqlmodel import Session, col, func, select

from mldropd.records import BatchRun, Model, ModelRun
from mldropd.scheduling.schedules import ScheduleError, parse_schedule
from mldropd.states import ModelRunStatus, ModelStatus, RunStatus, Trigger

REFUSED_EXIT = 2  # the batch job's exit code when it refuses a batch that is not pending
_IN_PROGRESS = (ModelRunStatus.PENDING, ModelRunStatus.RUNNING)


def due_models(session: Session, day: dt.date) -> list[Model]:
    """Active models whose schedule makes them due on day."""
    models = session.exec(select(Model).where(Model.status == ModelStatus.ACTIVE)).all()
    due = []
    for model in models:
        try:
            if parse_schedule(model.schedule).is_due(day):
                due.append(model)
        except ScheduleError:
            continue  # cannot happen for a validated schedule; never block the others
    return due


def _latest_runs(session: Session, day: dt.date, model_ids: Iterable[int]) -> dict[int, ModelRun]:
    """The newest model run of each model for day."""
    ids = list(model_ids)
    if not ids:
        return {}
    newest = (
        select(ModelRun.model_id, func.max(ModelRun.id).label("id"))
        .where(ModelRun.date == day, col(ModelRun.model_id).in_(ids))
        .group_by(col(ModelRun.model_id))
        .subquery()
    )
    rows = session.exec(select(ModelRun).join(newest, col(ModelRun.id) == newest.c.id)).all()
    return {r.model_id: r for r in rows}


# A person's request starts a new failure episode: its first attempt is attempt 1 again.
EXPLICIT_TRIGGERS = frozenset({Trigger.MANUAL, Trigger.BACKFILL})


def attempts_so_far(session: Session, day: dt.date, model_id: int) -> int:
    """Attempts of the model for day in its current failure episode (see _attempts)."""
    return _attempts(session, day, [model_id]).get(model_id, 0)


def _attempts(session: Session, day: dt.date, model_ids: list[int]) -> dict[int, int]:
    """Per model, the failed attempts for day since its last success or explicit request.

    max_attempts counts a failure episode, not the date's whole history: a date re-scored nine
    times and then failing is at attempt 1 again. Walking the finished runs newest first, a
    success ends the episode before it (not counted), an explicit request (run now, backfill,
    re-run) ends it at itself (counted: it was the episode's first attempt).
    """
    counts: dict[int, int] = {}
    for start in range(0, len(model_ids), 500):  # far below SQLite's bound on parameters
        rows = session.exec(
            select(ModelRun.model_id, ModelRun.status, ModelRun.trigger)
            .where(
                ModelRun.date == day,
                col(ModelRun.model_id).in_(model_ids[start : start + 500]),
                col(ModelRun.status).in_([ModelRunStatus.SUCCEEDED, ModelRunStatus.FAILED]),
            )
            .order_by(col(ModelRun.model_id), col(ModelRun.id).desc())
        ).all()
        ended: set[int] = set()
        for model_id, status, trigger in rows:
            if model_id in ended:
                continue
            if status == ModelRunStatus.SUCCEEDED:
                ended.add(model_id)
                continue
            counts[model_id] = counts.get(model_id, 0) + 1
            if trigger in EXPLICIT_TRIGGERS:
                ended.add(model_id)
    return counts


def lock_for_planning(session: Session) -> None:
    """Take SQLite's write lock now, so what this transaction reads stays true until it commits.

    Two planners (the daemon and `mldropd run`, or two CLI runs) would otherwise both see no run
    in progress and both plan the same model; an UPDATE that changes nothing still takes the
    lock, and the other planner waits (busy_timeout) and then sees this one's runs.
    """
    session.connection().execute(text("UPDATE batch_run SET id = id WHERE 0"))


def plan_batch(
    session: Session,
    day: dt.date,
    trigger: Trigger,
    models: list[Model],
    *,
    force: bool = False,
) -> tuple[BatchRun | None, dict[int, ModelRun]]:
    """Create a pending batch run with one pending model run per model that needs scoring.

    Returns the batch (None when nothing is left to do) and, for every requested model, the
    model run that covers it: the new one, the one already in progress (a concurrent request
    joins it) or, without force, the one that already succeeded.
    """
    lock_for_planning(session)
    latest = _latest_runs(session, day, [m.id for m in models if m.id is not None])
    covered: dict[int, ModelRun] = {}
    todo: list[Model] = []
    for model in models:
        assert model.id is not None
        last = latest.get(model.id)
        if last is not None and (
            last.status in _IN_PROGRESS or (last.status == ModelRunStatus.SUCCEEDED and not force)
        ):
            covered[model.id] = last
        else:
            todo.append(model)
    if not todo:
        return None, covered
    batch = BatchRun(date=day, trigger=trigger, force=force, status=RunStatus.PENDING)
    session.add(batch)
    session.flush()
    assert batch.id is not None
    fresh = trigger in EXPLICIT_TRIGGERS
    attempts = {} if fresh else _attempts(session, day, [m.id for m in todo if m.id is not None])
    for model in todo:
        assert model.id is not None
        run = ModelRun(
            batch_id=batch.id,
            model_id=model.id,
            model_version=model.version,
            date=day,
            trigger=trigger,
            attempt=attempts.get(model.id, 0) + 1,
        )
        session.add(run)
        covered[model.id] = run
    session.flush()
    return batch, covered


def retry_at(
    attempt: int, max_attempts: int, retry_delay_s: int, now: dt.datetime
) -> dt.datetime | None:
    """When a model that failed its attempt-th try is tried again (None: no more tries)."""
    if attempt >= max_attempts:
        return None
    return now + dt.timedelta(seconds=retry_delay_s)


def process_alive(pid: int | None) -> bool:
    """True when a process with this id exists (ours or another user's)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
