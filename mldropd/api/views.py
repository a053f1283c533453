"""JSON shapes of models, runs and DQ results: one place, used by the API and the pages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, col, select

from mldropd.records import DQResult, Model, ModelRun, ModelVersion, User
from mldropd.registry import versions
from mldropd.scheduling.scheduler import sweep_fire_time
from mldropd.scheduling.schedules import parse_schedule
from mldropd.settings import Settings


def next_run_date(model: Model, settings: Settings, now: dt.datetime) -> dt.date | None:
    """The date of the next sweep that will score the model (None when paused)."""
    if model.status != "active":
        return None
    fire = sweep_fire_time(settings, now)
    if fire is None:
        return None
    return parse_schedule(model.schedule).next_due(fire.date())


def run_json(run: ModelRun) -> dict[str, Any]:
    return {
        "id": run.id, "model_id": run.model_id, "batch_id": run.batch_id,
        "model_version": run.model_version, "date": run.date.isoformat(),
        "status": run.status, "attempt": run.attempt, "trigger": run.trigger, "rows": run.rows,
        "seconds": None if run.seconds is None else round(run.seconds, 3), "error": run.error,
        "slice_date": run.slice_date.isoformat() if run.slice_date else None,
        "warning": run.warning,
        "quarantined": run.quarantined,
        "created_at": _iso(run.created_at), "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def dq_json(dq: DQResult) -> dict[str, Any]:
    return {
        "model_id": dq.model_id, "model_run_id": dq.model_run_id, "date": dq.date.isoformat(),
        "reference_date": dq.reference_date.isoformat() if dq.reference_date else None,
        "psi": dq.psi, "psi_noise": dq.psi_noise, "auc": dq.auc, "ks": dq.ks,
        "status": dq.status, "reason": dq.reason, "details": dq.details,
    }


def version_json(v: ModelVersion) -> dict[str, Any]:
    return {
        "version": v.version, "sha256": v.sha256, "size": v.size, "features": v.features,
        "uploaded_at": _iso(v.uploaded_at), "uploaded_by": v.uploaded_by,
        "contract": v.contract, "dry_run": v.dry_run, "scan": v.scan,
    }


def last_run(session: Session, model_id: int) -> ModelRun | None:
    return session.exec(select(ModelRun).where(ModelRun.model_id == model_id)
                        .order_by(col(ModelRun.date).desc(), col(ModelRun.id).desc())).first()


def last_dq(session: Session, model_id: int) -> DQResult | None:
    return session.exec(select(DQResult).where(DQResult.model_id == model_id)
                        .order_by(col(DQResult.date).desc(), col(DQResult.id).desc())).first()


def model_json(session: Session, model: Model, settings: Settings, now: dt.datetime, *,
               detail: bool = False) -> dict[str, Any]:
    """A model as the API shows it; detail adds every version."""
    assert model.id is not None
    owner = session.get(User, model.owner_id)
    current = session.exec(select(ModelVersion).where(
        ModelVersion.model_id == model.id, ModelVersion.version == model.version)).first()
    run = last_run(session, model.id)
    dq = last_dq(session, model.id)
    nxt = next_run_date(model, settings, now)
    data: dict[str, Any] = {
        "id": model.id, "name": model.name, "owner": owner.email if owner else None,
        "email": model.email, "schedule": model.schedule,
        "schedule_text": parse_schedule(model.schedule).describe(), "status": model.status,
        "version": model.version,
        "dq": {**((current.contract.get("dq") or {}) if current else {}), **(model.dq or {})},
        "features": current.features if current else [],
        "next_run_date": nxt.isoformat() if nxt else None,
        "last_run": None if run is None else {
            "id": run.id, "status": run.status, "date": run.date.isoformat(),
            "rows": run.rows, "seconds": run.seconds, "attempt": run.attempt,
            "error": run.error},
        "last_dq": None if dq is None else {
            "date": dq.date.isoformat(), "status": dq.status, "psi": dq.psi, "auc": dq.auc,
            "reason": dq.reason},
        "created_at": _iso(model.created_at), "updated_at": _iso(model.updated_at),
    }
    if detail:
        data["versions"] = [version_json(v) for v in versions(session, model.id)]
    elif current is not None:
        data["dry_run"] = current.dry_run
    return data


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()
