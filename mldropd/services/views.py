"""JSON shapes of models, runs and DQ results (mldropd.services.schemas), built from the records
in one place: the services answer the API, the pages and the CLI with them."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sqlite3
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import bindparam, text
from sqlalchemy import select as sa_select
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from mldropd.inspect import scan_notes
from mldropd.records import DQResult, Model, ModelRun, ModelVersion, User
from mldropd.registry import versions
from mldropd.scheduling.scheduler import sweep_fire_time
from mldropd.scheduling.schedules import Schedule, parse_schedule
from mldropd.services.access import Caller, visible
from mldropd.services.schemas import (
    DQOut,
    LastDQOut,
    ModelDetailOut,
    ModelFields,
    ModelOut,
    ProgressOut,
    RunOut,
    RunSummaryOut,
    VersionOut,
)
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, ModelStatus, Phase


def next_run_date(model: Model, settings: Settings, now: dt.datetime) -> dt.date | None:
    """The date of the next sweep that will score the model (None when paused)."""
    if model.status != ModelStatus.ACTIVE:
        return None
    fire = sweep_fire_time(settings, now)
    if fire is None:
        return None
    return parse_schedule(model.schedule).next_due(fire.date())


def progress_json(run: Any) -> ProgressOut:
    """The progress fields of a run (a record, or a row of its columns): all of them while it
    runs; the phase alone while it waits for data; of a finished run, what it did."""
    status, phase = run.status, run.phase
    if status == ModelRunStatus.PENDING:  # queued, or re-queued: old figures say nothing
        waiting = phase == Phase.WAITING_FOR_DATA
        return {
            "phase": Phase.WAITING_FOR_DATA if waiting else None,
            "rows_done": None,
            "rows_total": None,
            "rows_per_s": None,
            "eta_s": None,
            "progress_at": None,
            "dates_done": run.dates_done if waiting else None,
            "dates_total": run.dates_total if waiting else None,
        }
    running = status == ModelRunStatus.RUNNING
    rate = run.rows_per_s
    return {
        "phase": Phase(phase) if running and phase else None,
        "rows_done": run.rows_done,
        "rows_total": run.rows_total,
        "rows_per_s": None if rate is None else round(rate, 1),
        "eta_s": None if run.eta_s is None or not running else round(run.eta_s, 1),
        "progress_at": _iso(run.progress_at),
        "dates_done": run.dates_done,
        "dates_total": run.dates_total,
    }


def run_json(run: ModelRun) -> RunOut:
    assert run.id is not None
    return {
        "id": run.id,
        "model_id": run.model_id,
        "batch_id": run.batch_id,
        "model_version": run.model_version,
        "date": run.date.isoformat(),
        "status": run.status,
        "attempt": run.attempt,
        "trigger": run.trigger,
        "rows": run.rows,
        "seconds": None if run.seconds is None else round(run.seconds, 3),
        "error": run.error,
        "slice_date": run.slice_date.isoformat() if run.slice_date else None,
        "warning": run.warning,
        "quarantined": run.quarantined,
        "stale_slice": run.stale_slice,  # said when slice_date is not the run date
        "key_check": run.key_check,  # null / duplicated entity keys and what was done
        **progress_json(run),
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
    }


def dq_json(dq: DQResult) -> DQOut:
    return {
        "model_id": dq.model_id,
        "model_run_id": dq.model_run_id,
        "date": dq.date.isoformat(),
        "reference_date": dq.reference_date.isoformat() if dq.reference_date else None,
        "psi": dq.psi,
        "psi_noise": dq.psi_noise,
        "auc": dq.auc,
        "ks": dq.ks,
        "status": dq.status,
        "reason": dq.reason,
        "details": dq.details,
    }


def version_json(v: ModelVersion) -> VersionOut:
    return {
        "version": v.version,
        "sha256": v.sha256,
        "size": v.size,
        "features": v.features,
        "uploaded_at": _iso(v.uploaded_at),
        "uploaded_by": v.uploaded_by,
        "contract": v.contract,
        "dry_run": v.dry_run,
        "scan": v.scan,
        "scan_notes": scan_notes(v.scan),  # e.g. "contains serialized Python functions ..."
        "warnings": v.warnings or [],  # e.g. saved with scikit-learn 1.2.2, runs with 1.9.1
    }


def last_run(session: Session, model_id: int) -> ModelRun | None:
    return session.exec(
        select(ModelRun)
        .where(ModelRun.model_id == model_id)
        .order_by(col(ModelRun.date).desc(), col(ModelRun.id).desc())
    ).first()


# A run waiting or in progress; the text matches ix_model_run_busy's, so SQLite uses that index.
_BUSY_SQL = "status IN ('pending', 'running')"


def active_run(session: Session, model_id: int) -> ModelRun | None:
    """The model's run in progress (else its oldest waiting one): what a backfill is at."""
    return session.exec(
        select(ModelRun)
        .where(ModelRun.model_id == model_id, text(_BUSY_SQL))
        .order_by(text("status = 'running' DESC"), col(ModelRun.date), col(ModelRun.id))
    ).first()


def last_dq(session: Session, model_id: int) -> DQResult | None:
    return session.exec(
        select(DQResult)
        .where(DQResult.model_id == model_id)
        .order_by(col(DQResult.date).desc(), col(DQResult.id).desc())
    ).first()


def _model_fields(
    session: Session, model: Model, settings: Settings, now: dt.datetime
) -> tuple[ModelFields, ModelVersion | None]:
    assert model.id is not None
    owner = session.get(User, model.owner_id)
    current = session.exec(
        select(ModelVersion).where(
            ModelVersion.model_id == model.id, ModelVersion.version == model.version
        )
    ).first()
    data = _model_data(
        model,
        owner.email if owner else None,
        current,
        last_run(session, model.id),
        active_run(session, model.id),
        last_dq(session, model.id),
        next_run_date(model, settings, now),
        parse_schedule(model.schedule),
    )
    return data, current


def model_json(session: Session, model: Model, settings: Settings, now: dt.datetime) -> ModelOut:
    """A model as a list shows it (model_list, in one query for many, agrees with it)."""
    data, current = _model_fields(session, model, settings, now)
    out = cast(ModelOut, data)
    if current is not None:
        out["dry_run"] = current.dry_run
    return out


def model_detail_json(
    session: Session, model: Model, settings: Settings, now: dt.datetime
) -> ModelDetailOut:
    """A model with every kept version, newest first."""
    data, _ = _model_fields(session, model, settings, now)
    assert model.id is not None
    return {**data, "versions": [version_json(v) for v in versions(session, model.id)]}


def _model_data(
    model: Model,
    owner: str | None,
    current: Any,
    run: Any,
    active: Any,
    dq: Any,
    nxt: dt.date | None,
    schedule: Schedule,
) -> ModelFields:
    """The list/detail shape; current, run and dq are records or rows of their columns."""
    last_dq: LastDQOut | None = (
        None
        if dq is None
        else {
            "date": dq.date.isoformat(),
            "status": dq.status,
            "psi": dq.psi,
            "auc": dq.auc,
            "reason": dq.reason,
        }
    )
    return {
        "id": model.id or 0,
        "name": model.name,
        "owner": owner,
        "email": model.email,
        "schedule": model.schedule,
        "schedule_text": schedule.describe(),
        "status": model.status,
        "version": model.version,
        "dq": {**((current.contract.get("dq") or {}) if current else {}), **(model.dq or {})},
        "features": current.features if current else [],
        "next_run_date": nxt.isoformat() if nxt else None,
        "last_run": _run_summary(run),
        # The run in progress, which in a backfill is not the newest date's: null when idle.
        "active_run": _run_summary(active),
        "last_dq": last_dq,
        "created_at": _iso(model.created_at),
        "updated_at": _iso(model.updated_at),
    }


def _run_summary(run: Any) -> RunSummaryOut | None:
    """What a model shows of one of its runs (a record, or a row of its columns)."""
    if run is None:
        return None
    return {
        "id": run.id,
        "status": run.status,
        "date": run.date.isoformat(),
        "rows": run.rows,
        "seconds": run.seconds,
        "attempt": run.attempt,
        "error": run.error,
        **progress_json(run),
    }


# -- lists: a fixed number of queries, however many models --------------------------------------
@dataclass(frozen=True)
class _VersionInfo:
    """What a list shows of a model's current version: parsed once, then kept (read-only)."""

    features: list[str]
    contract: dict[str, Any]
    dry_run: dict[str, Any]


def _newest(table: type[ModelRun] | type[DQResult]) -> Any:
    """The id of the model's newest row of table (by date, then id), as last_run/last_dq pick
    it: one seek in the (model_id, date, id) index."""
    return (
        select(table.id)
        .where(table.model_id == Model.id)
        .order_by(col(table.date).desc(), col(table.id).desc())
        .limit(1)
        .correlate(Model)
        .scalar_subquery()
    )


def _active() -> Any:
    """The id of the model's run in progress, as active_run picks it (ix_model_run_busy)."""
    return (
        select(ModelRun.id)
        .where(ModelRun.model_id == Model.id, text(f"model_run.{_BUSY_SQL}"))
        .order_by(text("model_run.status = 'running' DESC"), col(ModelRun.date), col(ModelRun.id))
        .limit(1)
        .correlate(Model)
        .scalar_subquery()
    )


# The columns of a run that a model shows (_run_summary), read as "<prefix>_<column>".
_RUN_COLUMNS = (
    "id", "status", "date", "rows", "seconds", "attempt", "error", "phase", "rows_done",
    "rows_total", "rows_per_s", "eta_s", "progress_at", "dates_done", "dates_total",
)  # fmt: skip


def _run_columns(table: Any, prefix: str) -> list[Any]:
    return [getattr(table, c).label(f"{prefix}_{c}") for c in _RUN_COLUMNS]


def _run_of(row: Any, prefix: str) -> SimpleNamespace | None:
    if getattr(row, f"{prefix}_id") is None:
        return None
    return SimpleNamespace(**{c: getattr(row, f"{prefix}_{c}") for c in _RUN_COLUMNS})


@functools.cache
def _list_query() -> Any:
    """Every column of Model and, for each model: owner, current version's key, newest run, run
    in progress and newest DQ result (only the columns a list shows: DQ details are large).
    Built once: building it costs as much as running it for a few models."""
    R, D, V, Owner = ModelRun, DQResult, ModelVersion, aliased(User)  # noqa: N806
    A = aliased(ModelRun, name="active_run")  # noqa: N806
    model_columns = [getattr(Model, c.name) for c in Model.__table__.columns]  # type: ignore[attr-defined]
    return (
        sa_select(
            *model_columns,
            col(Owner.email).label("owner"),
            col(V.id).label("version_id"),
            col(V.uploaded_at).label("uploaded_at"),
            *_run_columns(R, "run"),
            *_run_columns(A, "active"),
            col(D.date).label("dq_date"),
            col(D.status).label("dq_status"),
            col(D.psi),
            col(D.auc),
            col(D.reason),
        )
        .select_from(Model)
        .join(Owner, col(Owner.id) == Model.owner_id)
        .outerjoin(V, (col(V.model_id) == Model.id) & (col(V.version) == Model.version))
        .outerjoin(R, R.id == _newest(R))
        .outerjoin(A, A.id == _active())
        .outerjoin(D, D.id == _newest(D))
        .order_by(col(Model.name), col(Model.id))
    )


class _RegistryCache:
    """What model lists keep of one database, in this process.

    - Parsed current versions: a version row never changes after its upload, and parsing its
      JSON documents is a list's main cost at a thousand models. Keyed by row id and upload
      time: SQLite may reuse the id of a deleted newest row, never with the same upload time.
    - Whole lists, reused while the database has not changed: SQLite's `PRAGMA data_version`,
      read on a connection of the cache's own that never writes, changes whenever any other
      connection commits, in this process or another (the batch job). Polling clients (pages
      refreshing themselves, dashboards, scripts) then cost the token check and the encoding.
    """

    LISTS_KEPT = 64
    VERSIONS_KEPT = 20_000

    def __init__(self, path: str | None) -> None:
        """path: the database file; None keeps versions for one call and lists never."""
        self._conn = (
            None
            if path is None
            else sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        )
        self._lock = threading.Lock()
        self._lists: OrderedDict[tuple[Any, ...], list[ModelOut]] = OrderedDict()
        self._versions: dict[tuple[int, dt.datetime], _VersionInfo] = {}

    def data_version(self) -> int | None:
        if self._conn is None:
            return None
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def get_list(self, key: tuple[Any, ...]) -> list[ModelOut] | None:
        with self._lock:
            rows = self._lists.get(key)
            if rows is not None:
                self._lists.move_to_end(key)
            return rows

    def keep_list(self, key: tuple[Any, ...], rows: list[ModelOut]) -> None:
        with self._lock:
            self._lists[key] = rows
            while len(self._lists) > self.LISTS_KEPT:
                self._lists.popitem(last=False)

    def versions(
        self, session: Session, keys: list[tuple[int, dt.datetime]]
    ) -> dict[tuple[int, dt.datetime], _VersionInfo]:
        """The versions of keys, parsing only those not seen before."""
        known = self._versions  # one dict for this call, even if another call starts afresh
        found = {key: known[key] for key in keys if key in known}
        missing = [key[0] for key in keys if key not in found]
        V = ModelVersion  # noqa: N806
        for start in range(0, len(missing), 500):
            rows = session.connection().execute(  # plain rows: sqlmodel's select takes 4 columns
                sa_select(
                    col(V.id), col(V.uploaded_at), col(V.features), col(V.contract), col(V.dry_run)
                ).where(col(V.id).in_(missing[start : start + 500]))
            )
            for version_id, uploaded_at, features, contract, dry_run in rows:
                found[(version_id, uploaded_at)] = _VersionInfo(features, contract, dry_run)
        if len(known) + len(missing) > self.VERSIONS_KEPT:
            self._versions = known = {}
        known.update(found)
        return found


_CACHES: weakref.WeakKeyDictionary[Any, _RegistryCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def _cache_of(session: Session) -> _RegistryCache:
    """The cache of the session's database (a database that is not a file gets none to keep)."""
    engine = session.get_bind().engine  # the Engine, also when bound to a Connection
    path = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return _RegistryCache(None)
    with _CACHES_LOCK:
        cache = _CACHES.get(engine)
        if cache is None:
            cache = _CACHES[engine] = _RegistryCache(path)
        return cache


def _has_own_writes(session: Session) -> bool:
    """Whether the session holds writes that are not committed (sqlite3 opens a transaction
    at the first write only): its lists are neither reused nor kept."""
    if session.new or session.dirty or session.deleted:
        return True
    return bool(getattr(session.connection().connection.dbapi_connection, "in_transaction", True))


def model_list(
    session: Session,
    caller: Caller,
    settings: Settings,
    now: dt.datetime,
    *,
    owner: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[ModelOut]:
    """The caller's models (an admin: all, or one owner's) by name, as model_json shows each,
    optionally one page of them: one query in all (and one more for versions
    this process has not parsed yet), however many models; the same list again while the
    database has not changed (callers may change the rows they get, not what is inside)."""
    cache = _cache_of(session)
    fire = sweep_fire_time(settings, now)  # next_run_date depends on the time, not the data
    data_version = None if _has_own_writes(session) else cache.data_version()
    key = (
        None
        if data_version is None
        else (data_version, caller.id, caller.is_admin, (owner or "").lower(), limit, offset, fire)
    )
    rows = None if key is None else cache.get_list(key)
    if rows is None:
        rows = _read_model_list(session, cache, caller, fire, owner, limit, offset)
        if key is not None:
            cache.keep_list(key, rows)
    return [cast(ModelOut, dict(row)) for row in rows]


def _read_model_list(
    session: Session,
    cache: _RegistryCache,
    caller: Caller,
    fire: dt.datetime | None,
    owner: str | None,
    limit: int | None,
    offset: int,
) -> list[ModelOut]:
    query = visible(_list_query(), caller, owner)
    if limit is not None:  # pick the page's models first: SQLite would join all, then sort
        page = visible(select(Model.id).order_by(col(Model.name), col(Model.id)), caller, owner)
        query = query.where(col(Model.id).in_(page.limit(limit).offset(offset).scalar_subquery()))
    found = list(session.exec(query))
    keys = {f.id: (f.version_id, f.uploaded_at) for f in found if f.version_id}
    versions = cache.versions(session, list(keys.values()))
    schedules: dict[str, Schedule] = {}
    out = []
    for f in found:
        schedule = schedules.get(f.schedule) or parse_schedule(f.schedule)
        schedules[f.schedule] = schedule
        nxt = schedule.next_due(fire.date()) if fire and f.status == ModelStatus.ACTIVE else None
        version = versions.get(keys[f.id]) if f.id in keys else None
        dq = (
            None
            if f.dq_date is None
            else SimpleNamespace(
                date=f.dq_date, status=f.dq_status, psi=f.psi, auc=f.auc, reason=f.reason
            )
        )
        data = cast(
            ModelOut,
            _model_data(
                f, f.owner, version, _run_of(f, "run"), _run_of(f, "active"), dq, nxt, schedule
            ),
        )
        if version is not None:
            data["dry_run"] = version.dry_run
        out.append(data)
    return out


def version_numbers(session: Session, model_ids: list[int]) -> dict[int, list[int]]:
    """Each model's kept version numbers, newest first, in one query."""
    out: dict[int, list[int]] = {}
    V = ModelVersion  # noqa: N806
    for start in range(0, len(model_ids), 500):
        chunk = model_ids[start : start + 500]
        for model_id, version in session.exec(
            select(V.model_id, V.version)
            .where(col(V.model_id).in_(chunk))
            .order_by(col(V.version).desc())
        ):
            out.setdefault(model_id, []).append(version)
    return out


def busy_model_ids(session: Session) -> set[int]:
    """Models with a run waiting or in progress (the partial index holds only those runs)."""
    return set(
        session.exec(
            select(ModelRun.model_id).distinct().where(text("status IN ('pending', 'running')"))
        )
    )


_PSI_HISTORY = text("""
    SELECT m.id,
      (SELECT json_group_array(json_array(h.date, h.id, h.psi)) FROM
         (SELECT date, id, psi FROM dq_result WHERE model_id = m.id
          ORDER BY date DESC, id DESC LIMIT :scan) AS h),
      (SELECT json_extract(details, '$.thresholds.psi_warn') FROM dq_result
        WHERE model_id = m.id ORDER BY date DESC, id DESC LIMIT 1)
    FROM model AS m WHERE m.id IN :ids""").bindparams(bindparam("ids", expanding=True))


def psi_histories(
    session: Session, model_ids: list[int], points: int
) -> dict[int, tuple[list[float | None], float | None]]:
    """Each model's PSI on its last `points` scored dates, oldest first (a re-scored date counts
    once, with its newest result), and the PSI warn threshold of its newest result.

    One query: SQLite reads each model's newest rows from the (model_id, date, id, psi) index
    alone, neither older rows nor the large details documents (only the newest one's warn
    threshold). A few re-scored dates among the newest rows cost the line as many points."""
    out: dict[int, tuple[list[float | None], float | None]] = {}
    for start in range(0, len(model_ids), 500):
        chunk = model_ids[start : start + 500]
        rows = session.connection().execute(_PSI_HISTORY, {"ids": chunk, "scan": points + 10})
        for model_id, history, warn in rows:
            newest: dict[str, tuple[int, float | None]] = {}
            for day, row_id, psi in json.loads(history or "[]"):
                if day not in newest or row_id > newest[day][0]:
                    newest[day] = (row_id, psi)
            days = sorted(newest)[-points:]
            out[model_id] = ([newest[d][1] for d in days], None if warn is None else float(warn))
    return out


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat()
