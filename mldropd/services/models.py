"""ModelService: the caller's models as the API shows them, their changes (schedule, e-mail,
pause and resume, roll back, DQ settings), deletes and DQ history; and the reads the pages add
(one page of the models table, a model's page, the dashboard's PSI lines).

Uploads come in through mldropd.uploads and mldropd.intake (streamed, scanned, validated in a
sandbox, then registry.store_and_record); everything after that is here.
"""

from __future__ import annotations

import builtins
import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mldropd import audit
from mldropd.contract import DQ_KEYS, check_dq, check_email, check_schedule
from mldropd.db import session_scope
from mldropd.errors import Conflict, FieldError, ValidationFailed
from mldropd.records import DQResult, Model, ModelRun, ModelVersion, OutboxMessage, User, utcnow
from mldropd.registry import check_quota
from mldropd.scheduling.schedules import parse_schedule
from mldropd.services import views
from mldropd.services.access import Caller, model_of, models_of, visible
from mldropd.services.schemas import DQOut, ModelDetailOut, ModelOut, RunOut
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, ModelStatus
from mldropd.store.base import ArtifactStore, model_prefix

log = logging.getLogger(__name__)

CHANGEABLE = ("dq", "email", "schedule", "status", "version")


@dataclass(frozen=True)
class ModelTable:
    """One page of the models table: the rows, and which of them are busy or have versions."""

    rows: list[ModelOut]
    busy: set[int]  # models with a run waiting or in progress
    versions: dict[int, list[int]]  # each model's kept version numbers, newest first


@dataclass(frozen=True)
class ModelPage:
    """Everything a model's page shows."""

    model: ModelDetailOut
    runs: list[RunOut]  # newest first
    dq: list[DQOut]  # one per scored date (its newest result), oldest first
    report: OutboxMessage | None  # the newest report e-mail about the model
    busy: bool


class ModelService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        store: ArtifactStore | None,
        now: Callable[[], dt.datetime],
    ) -> None:
        """store: where the artifacts are (None: this caller never deletes a model)."""
        self.engine, self.settings, self.store, self.now = engine, settings, store, now

    # -- reads ---------------------------------------------------------------------------------
    def list(
        self, caller: Caller, *, owner: str | None = None, limit: int | None = None, offset: int = 0
    ) -> builtins.list[ModelOut]:
        """The caller's models by name (an admin: all, or one owner's), optionally one page."""
        with Session(self.engine) as s:
            return views.model_list(
                s, caller, self.settings, self.now(), owner=owner, limit=limit, offset=offset
            )

    def count(self, caller: Caller) -> int:
        """How many models the caller sees."""
        with Session(self.engine) as s:
            return int(s.exec(visible(select(func.count()).select_from(Model), caller)).one())

    def get(self, caller: Caller, model_id: int) -> ModelDetailOut:
        """One model with its versions; another user's model is not found."""
        with Session(self.engine) as s:
            return views.model_detail_json(
                s, model_of(s, caller, model_id), self.settings, self.now()
            )

    def dq_history(self, caller: Caller, model_id: int) -> builtins.list[DQOut]:
        """The model's DQ results by date (a re-scored date has one per scoring)."""
        with Session(self.engine) as s:
            model_of(s, caller, model_id)
            rows = s.exec(
                select(DQResult)
                .where(DQResult.model_id == model_id)
                .order_by(col(DQResult.date), col(DQResult.id))
            )
            return [views.dq_json(r) for r in rows]

    def table(self, caller: Caller, *, limit: int, offset: int) -> ModelTable:
        """One page of the models table."""
        with Session(self.engine) as s:
            rows = views.model_list(
                s, caller, self.settings, self.now(), limit=limit, offset=offset
            )
            return ModelTable(
                rows,
                views.busy_model_ids(s),
                views.version_numbers(s, [r["id"] for r in rows]),
            )

    def psi_histories(
        self, model_ids: builtins.list[int], points: int
    ) -> dict[int, tuple[builtins.list[float | None], float | None]]:
        """Each model's PSI on its last `points` scored dates and its PSI warn threshold (the
        ids come from a list the caller was allowed to see)."""
        with Session(self.engine) as s:
            return views.psi_histories(s, model_ids, points)

    def artifacts(self, caller: Caller) -> builtins.list[tuple[ModelVersion, Model]]:
        """Every stored version with its model, by model and version (`mldropd store check`,
        `mldropd backup`)."""
        with Session(self.engine) as s:
            query = visible(
                select(ModelVersion, Model)
                .join(Model, col(Model.id) == col(ModelVersion.model_id))
                .order_by(col(ModelVersion.model_id), col(ModelVersion.version)),
                caller,
            )
            return [(v, m) for v, m in s.exec(query)]

    def pipeline_types(self, caller: Caller, model_ids: builtins.list[int]) -> builtins.list[str]:
        """The pipeline type of each model's current version (what its sandbox preloads)."""
        with Session(self.engine) as s:
            return [
                str(v.contract.get("pipeline_type") or "")
                for model in models_of(s, caller, model_ids)
                for v in s.exec(
                    select(ModelVersion).where(
                        ModelVersion.model_id == model.id, ModelVersion.version == model.version
                    )
                )
            ]

    def page(self, caller: Caller, model_id: int, *, runs: int, dq_dates: int) -> ModelPage:
        """A model's page: the model, its newest runs, the DQ of its last `dq_dates` dates."""
        with Session(self.engine) as s:
            model = model_of(s, caller, model_id)
            newest_runs = s.exec(
                select(ModelRun)
                .where(ModelRun.model_id == model_id)
                .order_by(col(ModelRun.id).desc())
                .limit(runs)
            )
            newest_dq = list(
                s.exec(
                    select(DQResult)
                    .where(DQResult.model_id == model_id)
                    .order_by(col(DQResult.date).desc(), col(DQResult.id).desc())
                    .limit(2 * dq_dates)
                )
            )
            # Oldest first; a re-scored date shows its last result.
            by_date = {d.date: d for d in reversed(newest_dq)}
            return ModelPage(
                views.model_detail_json(s, model, self.settings, self.now()),
                [views.run_json(r) for r in newest_runs],
                [views.dq_json(d) for d in list(by_date.values())[-dq_dates:]],
                _last_report(s, model),
                model_id in views.busy_model_ids(s),
            )

    # -- changes -------------------------------------------------------------------------------
    def update(self, caller: Caller, model_id: int, changes: dict[str, Any]) -> ModelDetailOut:
        """Change schedule, email, status (active/paused), version (roll back) or DQ settings;
        every problem with the values is reported at once. Audited with the change."""
        problems = _problems(changes)
        if problems:
            raise ValidationFailed(problems)
        with session_scope(self.engine) as s:
            model = model_of(s, caller, model_id)
            if "version" in changes:
                exists = s.exec(
                    select(ModelVersion).where(
                        ModelVersion.model_id == model.id,
                        ModelVersion.version == changes["version"],
                    )
                ).first()
                if exists is None:
                    raise ValidationFailed(
                        [
                            FieldError(
                                "version",
                                f"model {model.name} has no version {changes['version']!r}",
                            )
                        ]
                    )
                model.version = exists.version
            if changes.get("status") == ModelStatus.ACTIVE and model.status != ModelStatus.ACTIVE:
                owner = s.get(User, model.owner_id)
                assert owner is not None
                check_quota(s, owner, self.settings)
            if "schedule" in changes:
                model.schedule = parse_schedule(changes["schedule"]).text
            if "dq" in changes:  # a value of null removes that override
                merged = {**model.dq, **changes["dq"]}
                model.dq = {k: v for k, v in merged.items() if v is not None}
            audit.record_model_change(s, caller.email, model, changes)
            if "email" in changes:
                model.email = changes["email"]
            if "status" in changes:
                model.status = ModelStatus(changes["status"])
            model.updated_at = utcnow()
        log.info(
            "model changed: %s",
            ", ".join(sorted(changes)),
            extra={"model_id": model_id, "user": caller.email},
        )
        return self.get(caller, model_id)

    def delete(self, caller: Caller, model_id: int) -> None:
        """Stop scheduling and remove the artifacts and records; the scores table keeps its
        scores. A model being scored is not deleted (Conflict)."""
        assert self.store is not None, "deleting a model needs the artifact store"
        with session_scope(self.engine) as s:
            model = model_of(s, caller, model_id)
            busy = s.exec(
                select(ModelRun.id).where(
                    ModelRun.model_id == model.id,
                    col(ModelRun.status).in_([ModelRunStatus.PENDING, ModelRunStatus.RUNNING]),
                )
            ).first()
            if busy is not None:
                raise Conflict(
                    f"model {model.name} is being scored (run {busy}); delete it when the "
                    "run has finished"
                )
            owner = s.get(User, model.owner_id)
            assert owner is not None
            prefix = model_prefix(owner.id or 0, model.id or 0)
            for row in s.exec(select(ModelVersion).where(ModelVersion.model_id == model.id)):
                s.delete(row)
            for table in (DQResult, ModelRun):
                for child in s.exec(select(table).where(table.model_id == model.id)):
                    s.delete(child)
                s.flush()  # children first: without ORM relationships nothing orders the deletes
            s.delete(model)
            audit.record(
                s,
                caller.email,
                "model.delete",
                f"model:{model_id}",
                name=model.name,
                owner=owner.email,
            )
        self.store.delete_prefix(prefix)
        log.info("model deleted", extra={"model_id": model_id, "user": caller.email})


def _problems(changes: dict[str, Any]) -> list[FieldError]:
    """Every problem with the values of a change, at once."""
    problems = [
        FieldError(k, f"`{k}` cannot be changed; use one of {', '.join(CHANGEABLE)}")
        for k in changes
        if k not in CHANGEABLE
    ]
    if "schedule" in changes:
        problems += check_schedule(changes["schedule"])
    if "email" in changes:
        problems += check_email(changes["email"], "email")
    if "dq" in changes:
        problems += [FieldError(p.field, p.message) for p in check_dq(changes["dq"])]
        if isinstance(changes["dq"], dict):
            unknown = sorted(set(changes["dq"]) - {*DQ_KEYS, "gate"})
            problems += [FieldError(f"dq.{k}", f"`dq.{k}` is not a DQ setting") for k in unknown]
    if "status" in changes and changes["status"] not in (ModelStatus.ACTIVE, ModelStatus.PAUSED):
        problems.append(FieldError("status", "`status` must be 'active' or 'paused'"))
    return problems


def _last_report(s: Session, model: Model) -> OutboxMessage | None:
    """The newest report e-mail sent to the model's address that is about this model."""
    word = re.compile(rf"(?<![\w-]){re.escape(model.name)}(?![\w-])")
    rows = s.exec(
        select(OutboxMessage)
        .where(OutboxMessage.to == model.email)
        .order_by(col(OutboxMessage.id).desc())
        .limit(50)
    )
    return next((r for r in rows if word.search(r.subject) or word.search(r.body_text)), None)
