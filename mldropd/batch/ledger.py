"""The run-state ledger: every BatchRun and ModelRun state change, in one place.

Used by the batch job (claim, succeed, fail, wait, close) and the daemon (recover, close a job
that died, discard held scores) alike; each function is one transaction, checked against the
transitions of mldropd.states. Light on purpose: SQLModel and the records only, so the web
process that imports it pulls in no data library.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mldropd.batch.plan import lock_for_planning, process_alive
from mldropd.db import session_scope
from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion, utcnow
from mldropd.states import (
    ModelRunStatus,
    RunStatus,
    check_model_run_transition,
    check_run_transition,
)

_BUSY = (ModelRunStatus.PENDING, ModelRunStatus.RUNNING)


@dataclass
class Claimed:
    """A batch taken by a job: its date and the model runs it now owns."""

    date: dt.date
    runs: list[tuple[ModelRun, Model, ModelVersion]]


class NotRunnable(Exception):
    """The batch is finished or already running; the message says which."""


def claim_runner(engine: Engine, batch_id: int, pid: int) -> bool:
    """Make `pid` the runner of a pending batch; False when it is not pending or another live
    process (the daemon, another `mldropd run`) already runs or watches it."""
    with session_scope(engine) as s:
        lock_for_planning(s)
        batch = s.get(BatchRun, batch_id)
        if batch is None or batch.status != RunStatus.PENDING:
            return False
        if batch.runner_pid not in (None, pid) and process_alive(batch.runner_pid):
            return False
        batch.runner_pid = pid
        return True


def pending_runs(s: Session, batch_id: int) -> list[tuple[ModelRun, Model, ModelVersion]]:
    """The batch's pending model runs with their model and version."""
    rows = s.exec(
        select(ModelRun, Model, ModelVersion)
        .join(Model, col(Model.id) == ModelRun.model_id)
        .join(
            ModelVersion,
            (col(ModelVersion.model_id) == ModelRun.model_id)
            & (col(ModelVersion.version) == ModelRun.model_version),
        )
        .where(ModelRun.batch_id == batch_id, ModelRun.status == ModelRunStatus.PENDING)
    ).all()
    return [(r, m, v) for r, m, v in rows]


def claim(engine: Engine, batch_id: int) -> Claimed:
    """Start a pending batch in this process: it and its pending model runs become running.
    Anything else is refused in one sentence (NotRunnable)."""
    with session_scope(engine) as s:
        lock_for_planning(s)  # two jobs given one batch: one of them gets it
        batch = s.get(BatchRun, batch_id)
        why = refusal(batch, batch_id)
        if why is not None:
            raise NotRunnable(why)
        assert batch is not None
        batch.status = check_run_transition(batch.status, RunStatus.RUNNING)
        batch.pid, batch.started_at, batch.heartbeat_at = os.getpid(), utcnow(), utcnow()
        rows = pending_runs(s, batch_id)
        for run, _, _ in rows:
            run.status = check_model_run_transition(run.status, ModelRunStatus.RUNNING)
            run.started_at = utcnow()
        return Claimed(batch.date, rows)


def refusal(batch: BatchRun | None, batch_id: int) -> str | None:
    """Why a batch cannot be started, in one sentence (None: it can)."""
    if batch is None:
        return (
            f"batch run {batch_id} does not exist; plan one with "
            "`mldropd run --plan-only --date YYYY-MM-DD` and pass the id it prints"
        )
    if batch.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
        return (
            f"batch run {batch_id} ({batch.date}) already finished ({batch.status}); a batch "
            f"runs once: plan a new one with `mldropd run --plan-only --date {batch.date}`"
        )
    if batch.status == RunStatus.RUNNING:
        return (
            f"batch run {batch_id} ({batch.date}) is already running in process "
            f"{batch.pid}; wait for it (GET /api/v1/runs?date=...) instead of starting it twice"
        )
    return None


def busy(engine: Engine, batch_id: int) -> str:
    """Why a batch another process holds cannot be started here."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        return refusal(batch, batch_id) or (
            f"batch run {batch_id} is being started by another process; wait for it"
        )


def beat(engine: Engine, batch_id: int) -> None:
    """The batch job is alive (the daemon stops a job whose heartbeat stops)."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        if batch is not None:
            batch.heartbeat_at = utcnow()


def fail_run(engine: Engine, run_id: int, error: str, **fields: Any) -> None:
    with session_scope(engine) as s:
        run = s.get(ModelRun, run_id)
        assert run is not None
        run.status = check_model_run_transition(run.status, ModelRunStatus.FAILED)
        run.error, run.finished_at = error, utcnow()
        for key, value in fields.items():
            setattr(run, key, value)


def succeed_run(engine: Engine, run_id: int, dq: DQResult | None, **fields: Any) -> None:
    """The model's scores are published (or held at the gate); its DQ result with it."""
    with session_scope(engine) as s:
        run = s.get(ModelRun, run_id)
        assert run is not None
        run.status = check_model_run_transition(run.status, ModelRunStatus.SUCCEEDED)
        for key, value in fields.items():
            setattr(run, key, value)
        run.finished_at = utcnow()
        if dq is not None:
            s.add(dq)


def wait_for_data(engine: Engine, batch_id: int, retry: dt.datetime, message: str) -> None:
    """The sensor: the slice is late; the batch and its runs wait until `retry`."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None
        batch.status = check_run_transition(batch.status, RunStatus.PENDING)
        batch.not_before, batch.pid = retry, None
        for run in s.exec(select(ModelRun).where(ModelRun.batch_id == batch_id)):
            if run.status == ModelRunStatus.RUNNING:
                run.status = check_model_run_transition(run.status, ModelRunStatus.PENDING)
                run.started_at, run.error = None, message


def close(engine: Engine, batch_id: int, error: str | None = None) -> RunStatus:
    """End the batch: runs still pending or running fail; succeeded only if all succeeded."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None
        runs = s.exec(select(ModelRun).where(ModelRun.batch_id == batch_id)).all()
        for run in runs:  # nothing may stay running once the job is over
            if run.status in _BUSY:
                run.status = ModelRunStatus.FAILED
                run.error = error or "the batch ended before this model was scored"
                run.finished_at = utcnow()
        ok = all(r.status == ModelRunStatus.SUCCEEDED for r in runs)
        batch.status = check_run_transition(
            batch.status, RunStatus.SUCCEEDED if ok and not error else RunStatus.FAILED
        )
        batch.error, batch.finished_at = error, utcnow()
        return RunStatus(batch.status)


def requeue(engine: Engine, batch_id: int) -> None:
    """A running batch whose job died: back to pending, from the start (recover)."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None
        for run in s.exec(
            select(ModelRun).where(ModelRun.batch_id == batch_id, col(ModelRun.status).in_(_BUSY))
        ):
            run.status, run.started_at = ModelRunStatus.PENDING, None
        batch.status = check_run_transition(batch.status, RunStatus.PENDING)
        batch.pid = None


def discard_held(run: ModelRun, error: str) -> None:
    """Scores held at the DQ gate were discarded: the run counts as failed (in the caller's
    transaction, beside its audit row)."""
    run.status = check_model_run_transition(run.status, ModelRunStatus.FAILED)
    run.quarantined = False
    run.error, run.finished_at = error, utcnow()


def status(engine: Engine, batch_id: int) -> tuple[RunStatus, dt.datetime | None, bool]:
    """(status, not_before, reported) of a batch."""
    with session_scope(engine) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None
        return RunStatus(batch.status), batch.not_before, batch.reported
