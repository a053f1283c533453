"""JSON shapes of models, runs and DQ results: one place, used by the API and the pages."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlmodel import Session, col, select

from mldropd.inspect import scan_notes
from mldropd.records import DQResult, Model, ModelRun, ModelVersion, User
from mldropd.registry import versions
from mldropd.scheduling.scheduler import sweep_fire_time
from mldropd.scheduling.schedules import Schedule, parse_schedule
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
        "scan_notes": scan_notes(v.scan),  # e.g. "contains serialized Python functions ..."
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
    data = _model_data(model, owner.email if owner else None, current,
                       last_run(session, model.id), last_dq(session, model.id),
                       next_run_date(model, settings, now), parse_schedule(model.schedule))
    if detail:
        data["versions"] = [version_json(v) for v in versions(session, model.id)]
    elif current is not None:
        data["dry_run"] = current.dry_run
    return data


def _model_data(model: Model, owner: str | None, current: Any, run: Any, dq: Any,
                nxt: dt.date | None, schedule: Schedule) -> dict[str, Any]:
    """The list/detail shape; current, run and dq are records or rows of their columns."""
    return {
        "id": model.id, "name": model.name, "owner": owner,
        "email": model.email, "schedule": model.schedule,
        "schedule_text": schedule.describe(), "status": model.status,
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


# -- lists: a fixed number of queries, however many models --------------------------------------
_SCAN_PER_MODEL = 3  # newest rows scanned per listed model before looking models up one by one


def latest_by_model(session: Session, table: type[ModelRun] | type[DQResult],
                    model_ids: list[int], columns: list[Any]) -> dict[int, Any]:
    """Each model's newest row of table (by date, then id), as last_run/last_dq pick it, with
    only the given columns (DQ details are large JSON documents a list does not show).

    The newest rows of the whole table come first through the date index, so models scored
    lately are all found in one short scan; the others (paused long ago, never scored) are
    looked up one by one, which costs little for them."""
    want = set(model_ids)
    found: dict[int, Any] = {}
    newest = (col(table.date).desc(), col(table.id).desc())
    scan = select(table.model_id, *columns).order_by(*newest)
    for row in session.exec(scan.limit(_SCAN_PER_MODEL * len(want) + 50)):
        if row.model_id in want and row.model_id not in found:
            found[row.model_id] = row
    for model_id in want - found.keys():
        row = session.exec(scan.where(table.model_id == model_id).limit(1)).first()
        if row is not None:
            found[model_id] = row
    return found


def models_json(session: Session, models: list[Model], settings: Settings,
                now: dt.datetime) -> list[dict[str, Any]]:
    """Many models as model_json shows each (without detail), in a few queries in all."""
    ids = [m.id for m in models if m.id is not None]
    if not ids:
        return []
    owner_ids = list({m.owner_id for m in models})
    owners = {u.id: u.email for u in session.exec(select(User).where(col(User.id).in_(owner_ids)))}
    current: dict[int, Any] = {}
    V = ModelVersion  # noqa: N806
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for v in session.exec(select(V.model_id, V.features, V.contract, V.dry_run)
                              .join(Model, (Model.id == V.model_id) & (Model.version == V.version))
                              .where(col(Model.id).in_(chunk))):
            current[v.model_id] = v
    R, D = ModelRun, DQResult  # noqa: N806
    runs = latest_by_model(session, R, ids, [R.id, R.status, R.date, R.rows, R.seconds,
                                             R.attempt, R.error])
    dqs = latest_by_model(session, D, ids, [D.date, D.status, D.psi, D.auc, D.reason])
    fire = sweep_fire_time(settings, now)
    schedules: dict[str, Schedule] = {}
    out = []
    for model in models:
        assert model.id is not None
        schedule = schedules.get(model.schedule) or parse_schedule(model.schedule)
        schedules[model.schedule] = schedule
        nxt = schedule.next_due(fire.date()) if fire and model.status == "active" else None
        version = current.get(model.id)
        data = _model_data(model, owners.get(model.owner_id), version, runs.get(model.id),
                           dqs.get(model.id), nxt, schedule)
        if version is not None:
            data["dry_run"] = version.dry_run
        out.append(data)
    return out


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.isoformat()
