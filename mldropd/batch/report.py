"""Report step: one e-mail per owner for a job's batches (a backfill's dates in one message),
built from one query and queued in the outbox in the same transaction that marks them
reported. Light: used by the batch job and by the daemon when a job died."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from mldropd.batch.plan import retry_at
from mldropd.db import session_scope
from mldropd.notify.outbox import enqueue
from mldropd.notify.reports import ReportItem, build_report
from mldropd.records import BatchRun, DQResult, Model, ModelRun, utcnow
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus


def report_batches(
    engine: Engine, settings: Settings, batch_ids: list[int], *, retries: bool
) -> None:
    """Queue every owner's report of these batches and mark them reported."""
    now = utcnow()
    sched = settings.scheduler
    with session_scope(engine) as s:
        rows = s.exec(
            select(ModelRun, Model, DQResult)
            .join(Model, col(Model.id) == ModelRun.model_id)
            .outerjoin(DQResult, col(DQResult.model_run_id) == ModelRun.id)
            .where(col(ModelRun.batch_id).in_(batch_ids))
            .order_by(col(ModelRun.date), col(ModelRun.id))
        ).all()
        by_owner: dict[str, list[ReportItem]] = defaultdict(list)
        for run, model, dq in rows:
            retry = None
            if run.status == ModelRunStatus.FAILED and retries:
                retry = retry_at(run.attempt, sched.max_attempts, sched.retry_delay, now)
            by_owner[model.email].append(
                ReportItem(
                    model_id=model.id or 0,
                    model_name=model.name,
                    model_version=run.model_version,
                    date=run.date,
                    status=run.status,
                    attempt=run.attempt,
                    max_attempts=sched.max_attempts,
                    rows=run.rows,
                    seconds=run.seconds,
                    error=run.error,
                    retry_at=retry,
                    dq=None if dq is None else _dq_fields(dq),
                    recovered=run.status == ModelRunStatus.SUCCEEDED and run.attempt > 1,
                    stale_slice=run.stale_slice,
                    keys=(run.key_check or {}).get("note"),
                    note=_note(run),
                )
            )
        for batch in s.exec(select(BatchRun).where(col(BatchRun.id).in_(batch_ids))):
            batch.reported = True
        for owner, items in by_owner.items():
            subject, text, html = build_report(owner, items, settings.base_url)
            enqueue(s, owner, subject, text, html)


def _dq_fields(dq: DQResult) -> dict[str, object]:
    return {
        "status": dq.status,
        "reason": dq.reason,
        "psi": dq.psi,
        "psi_noise": dq.psi_noise,
        "auc": dq.auc,
        "ks": dq.ks,
        "reference_date": dq.reference_date,
    }


def _note(run: ModelRun) -> str | None:
    notes = []
    if run.quarantined:
        notes.append(
            "Scores held back by the DQ publish gate: publish or discard them on the model page."
        )
    if run.warning:
        notes.append(f"Note: {run.warning}.")
    return " ".join(notes) or None
