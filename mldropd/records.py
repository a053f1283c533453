"""Database tables (SQLModel). One row type per noun of the data flow.

The column types at the database edge: every point in time is a `Moment` (aware UTC in, aware
UTC out; SQLite keeps the UTC wall time as text), every status a member of its enum in
mldropd.states (`_enum`: stored as the member's value, as text). No code repairs a naive
datetime or compares a status with a bare string it hopes is spelled right.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel, UTCDateTime

from mldropd.states import (
    DQStatus,
    ModelRunStatus,
    ModelStatus,
    OutboxStatus,
    Phase,
    RunStatus,
    SweepStatus,
    Trigger,
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# sqlmodel's UTCDateTime: binds aware datetimes as UTC (a naive one is refused: ValueError) and
# returns them aware in UTC; SQLite stores the UTC wall time ("2026-11-30 14:00:00.123456").
Moment = UTCDateTime


def _enum(states: type[StrEnum]) -> SAEnum:
    """A status column: the member's value as text (what was always stored), read back as the
    member; a value outside the enum is refused when written (LookupError)."""
    return SAEnum(
        states,
        native_enum=False,
        create_constraint=False,
        validate_strings=True,
        values_callable=lambda members: [m.value for m in members],
    )


class User(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, index=True)
    is_admin: bool = False
    token_hash: str = Field(unique=True, index=True)
    quota: int | None = None  # active models; None: the configured default
    disabled: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class Model(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="user.id", index=True)
    name: str
    email: str
    schedule: str = "daily"
    status: ModelStatus = Field(default=ModelStatus.ACTIVE, sa_type=_enum(ModelStatus))
    version: int = 1  # the version that is scored
    # DQ thresholds / gate set through the API; they win over the model object's `dq` key.
    dq: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_version"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    version: int
    artifact_key: str
    sha256: str
    size: int
    features: list[str] = Field(sa_column=Column(JSON, nullable=False))
    contract: dict[str, Any] = Field(
        sa_column=Column(JSON, nullable=False)
    )  # summary of the object
    dry_run: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    scan: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # Library-version mismatches found when the sandbox loaded it (warnings, never refusals).
    warnings: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    uploaded_by: str = ""
    uploaded_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class BatchRun(SQLModel, table=True):
    """One execution of the scoring job for one date (it may cover several models)."""

    __tablename__ = "batch_run"

    id: int | None = Field(default=None, primary_key=True)
    date: dt.date = Field(index=True)
    trigger: Trigger = Field(sa_type=_enum(Trigger))
    force: bool = False  # rescore even if the model already succeeded for the date
    status: RunStatus = Field(default=RunStatus.PENDING, sa_type=_enum(RunStatus))
    pid: int | None = None  # the batch job process
    runner_pid: int | None = None  # the daemon or CLI process that started the job
    heartbeat_at: dt.datetime | None = Field(default=None, sa_type=Moment)
    # A waiting batch (sensor) runs again at this time.
    not_before: dt.datetime | None = Field(default=None, sa_type=Moment)
    reported: bool = False  # the owners' report emails are in the outbox
    # While it runs (mldropd.batch.progress).
    phase: Phase | None = Field(default=None, sa_type=_enum(Phase))
    error: str | None = None
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)
    started_at: dt.datetime | None = Field(default=None, sa_type=Moment)
    finished_at: dt.datetime | None = Field(default=None, sa_type=Moment)


class ModelRun(SQLModel, table=True):
    """One model scored on one date in one attempt: what the API calls a run."""

    __tablename__ = "model_run"
    __table_args__ = (
        # A model's newest runs (last run, history) are one index seek, however long its history.
        Index("ix_model_run_model_date", "model_id", "date", "id"),
        # The few runs waiting or in progress, found without scanning the history.
        Index(
            "ix_model_run_busy", "model_id", sqlite_where=text("status IN ('pending', 'running')")
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="batch_run.id", index=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    model_version: int
    date: dt.date = Field(index=True)
    trigger: Trigger = Field(sa_type=_enum(Trigger))
    status: ModelRunStatus = Field(default=ModelRunStatus.PENDING, sa_type=_enum(ModelRunStatus))
    attempt: int = 1
    rows: int | None = None
    seconds: float | None = None
    error: str | None = None
    slice_date: dt.date | None = None  # the feature partition actually used
    warning: str | None = None  # e.g. much slower than the model's median run
    quarantined: bool = False  # scores held back by the DQ publish gate
    # Null and duplicated entity keys found in the slice, and what the key policies did.
    key_check: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # "scored from the 2026-11-29 slice: 2026-11-30 not present; max_staleness_days = 3"
    stale_slice: str | None = None
    # Progress while it is pending or running, from the batch job's own counts (never from the
    # model's sandbox): written by mldropd.batch.progress, a few times a second at most.
    phase: Phase | None = Field(default=None, sa_type=_enum(Phase))
    rows_done: int | None = None  # rows the trusted writer wrote for it so far
    rows_total: int | None = None  # rows of the slice it scores (after the key policies)
    rows_per_s: float | None = None  # the batch's scoring rate
    eta_s: float | None = None  # seconds left of the phase, as of progress_at
    progress_at: dt.datetime | None = Field(default=None, sa_type=Moment)
    dates_done: int | None = None  # a backfill: dates its job finished before this one
    dates_total: int | None = None  # ... of the dates the job was asked for
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)
    started_at: dt.datetime | None = Field(default=None, sa_type=Moment)
    finished_at: dt.datetime | None = Field(default=None, sa_type=Moment)


class DQResult(SQLModel, table=True):
    __tablename__ = "dq_result"
    # A model's newest results by date; psi included so sparklines read the index alone.
    __table_args__ = (Index("ix_dq_result_history", "model_id", "date", "id", "psi"),)

    id: int | None = Field(default=None, primary_key=True)
    model_run_id: int = Field(foreign_key="model_run.id", index=True)
    model_id: int = Field(index=True)
    date: dt.date = Field(index=True)
    reference_date: dt.date | None = None
    psi: float | None = None
    psi_noise: float | None = None
    auc: float | None = None
    ks: float | None = None
    status: DQStatus = Field(default=DQStatus.OK, sa_type=_enum(DQStatus))
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"

    id: int | None = Field(default=None, primary_key=True)
    to: str
    subject: str
    body_text: str
    body_html: str = ""
    status: OutboxStatus = Field(default=OutboxStatus.PENDING, sa_type=_enum(OutboxStatus))
    attempts: int = 0
    last_error: str | None = None
    next_attempt_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)
    sent_at: dt.datetime | None = Field(default=None, sa_type=Moment)
    path: str | None = None  # the .eml file, when kept in the outbox folder


class SweepLog(SQLModel, table=True):
    """Dates the sweep has handled: catch-up after downtime starts from the last one."""

    __tablename__ = "sweep_log"

    date: dt.date = Field(primary_key=True)
    status: SweepStatus = Field(default=SweepStatus.PLANNED, sa_type=_enum(SweepStatus))
    reason: str = ""
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class PickleAllowance(SQLModel, table=True):
    """A pickle global the scan refuses, allowed by an admin for one user's uploads."""

    __tablename__ = "pickle_allowance"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(foreign_key="user.id", index=True)
    name: str  # an exact dotted name, e.g. "posix.getcwd"
    allowed_by: str
    allowed_at: dt.datetime = Field(default_factory=utcnow, sa_type=Moment)


class AuditEvent(SQLModel, table=True):
    """Who did what to which object, and when: uploads, deletes, runs, admin actions."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime = Field(default_factory=utcnow, index=True, sa_type=Moment)
    actor: str = Field(index=True)  # a user's email, or "cli:<os user>"
    action: str = Field(index=True)  # e.g. model.upload, user.disable
    target: str = ""  # e.g. model:3, run:17, user:ann@example.com
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
