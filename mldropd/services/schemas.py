"""What the services take and give: request bodies (msgspec Structs, decoded by Litestar before a
handler runs) and the JSON shapes of the answers (TypedDicts, so the pages and the list cache use
the same plain dicts the API sends). The OpenAPI document at /schema/openapi.json is made from
these types: a field added here is documented there.

Requests check JSON types only (a string where a string goes); the services check the values
and report every problem at once (a wrong schedule next to a wrong status), whichever door the
request came through.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, TypedDict

import msgspec
from msgspec import UNSET, Meta, UnsetType

from mldropd.states import DQStatus, ModelRunStatus, ModelStatus, OutboxStatus, Phase, Trigger

# -- requests ------------------------------------------------------------------------------------


class ModelChanges(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """PATCH /api/v1/models/{id}: the fields to change; the others stay as they are."""

    schedule: Annotated[str, Meta(examples=["weekly:mon"])] | UnsetType = UNSET
    email: str | UnsetType = UNSET
    status: Annotated[str, Meta(description="active or paused")] | UnsetType = UNSET
    version: Annotated[int, Meta(description="a stored version: roll back")] | UnsetType = UNSET
    dq: (
        Annotated[
            dict[str, float | str | None],
            Meta(description="psi_warn, psi_alert, auc_warn, auc_alert, gate; null removes one"),
        ]
        | UnsetType
    ) = UNSET

    def given(self) -> dict[str, Any]:
        """The fields the request sets, by name."""
        return {
            name: value
            for name in self.__struct_fields__
            if (value := getattr(self, name)) is not UNSET
        }


class RunRequest(msgspec.Struct):
    """POST /api/v1/models/{id}/runs: score now, or a past date (a backfill of one date)."""

    date: dt.date | None = None


class RunsRequest(msgspec.Struct):
    """POST /api/v1/runs: score models for `date`, or every date from `from` to `to` (included,
    at most 367 days; `to` defaults to today), oldest first."""

    model_ids: Annotated[list[int], Meta(min_length=1)]
    date: dt.date | None = None
    first: dt.date | None = msgspec.field(name="from", default=None)
    last: dt.date | None = msgspec.field(name="to", default=None)


class RerunRequest(msgspec.Struct):
    """POST /api/v1/runs/rerun-failed: the date whose failed runs are scored again."""

    date: dt.date


class QuotaChange(msgspec.Struct, forbid_unknown_fields=True):
    """PATCH /api/v1/users/{email} (admins): a user's quota of active models."""

    quota: Annotated[int | None, Meta(description="active models allowed; null: the default")]


# -- answers -------------------------------------------------------------------------------------


class ProgressOut(TypedDict):
    """A run's progress (mldropd.batch.progress): the batch job's own counts, never the model's."""

    phase: Phase | None  # while it runs, or waits for its data
    rows_done: int | None  # rows written so far
    rows_total: int | None  # rows of the slice it scores
    rows_per_s: float | None  # the batch's scoring rate
    eta_s: float | None  # seconds left of the phase, as estimated at progress_at
    progress_at: str | None
    dates_done: int | None  # a backfill: dates of its job finished before this one
    dates_total: int | None  # ... of the dates the job was asked for


class RunOut(ProgressOut):
    """A model run as the API shows it (GET /api/v1/runs, /runs/{id})."""

    id: int
    model_id: int
    batch_id: int
    model_version: int
    date: str
    status: ModelRunStatus
    attempt: int
    trigger: Trigger
    rows: int | None
    seconds: float | None
    error: str | None
    slice_date: str | None
    warning: str | None
    quarantined: bool
    stale_slice: str | None  # said when slice_date is not the run date
    key_check: dict[str, Any] | None  # null / duplicated entity keys and what was done
    created_at: str | None
    started_at: str | None
    finished_at: str | None


class RunSummaryOut(ProgressOut):
    """What a model shows of one of its runs (its last one, the one in progress)."""

    id: int
    status: ModelRunStatus
    date: str
    rows: int | None
    seconds: float | None
    attempt: int
    error: str | None


class LastDQOut(TypedDict):
    """A model's newest DQ result, in short."""

    date: str
    status: DQStatus
    psi: float | None
    auc: float | None
    reason: str


class ModelFields(TypedDict):
    """What a model shows in a list and in detail."""

    id: int
    name: str
    owner: str | None
    email: str
    schedule: str
    schedule_text: str  # the schedule in words
    status: ModelStatus
    version: int  # the version that is scored
    dq: dict[str, Any]  # DQ thresholds and gate in force: the model object's, then the API's
    features: list[str]
    next_run_date: str | None
    last_run: RunSummaryOut | None
    active_run: RunSummaryOut | None  # the run in progress (a backfill's may be an older date)
    last_dq: LastDQOut | None
    created_at: str | None
    updated_at: str | None


class _DryRun(TypedDict, total=False):
    dry_run: dict[str, Any]  # the current version's dry run, when it has one


class ModelOut(ModelFields, _DryRun):
    """A model in a list (GET /api/v1/models)."""


class VersionOut(TypedDict):
    version: int
    sha256: str
    size: int
    features: list[str]
    uploaded_at: str | None
    uploaded_by: str
    contract: dict[str, Any]
    dry_run: dict[str, Any]
    scan: dict[str, Any]
    scan_notes: list[str]  # e.g. "contains serialized Python functions ..."
    warnings: list[str]  # e.g. saved with scikit-learn 1.2.2, runs with 1.9.1


class ModelDetailOut(ModelFields):
    """One model with every kept version, newest first (GET /api/v1/models/{id})."""

    versions: list[VersionOut]


class DQOut(TypedDict):
    """One DQ result (GET /api/v1/models/{id}/dq)."""

    model_id: int
    model_run_id: int
    date: str
    reference_date: str | None
    psi: float | None
    psi_noise: float | None
    auc: float | None
    ks: float | None
    status: DQStatus
    reason: str
    details: dict[str, Any]


class RunRequestedOut(TypedDict):
    """The run that scores a model for the asked date: new, or one already in progress."""

    run_id: int
    status: ModelRunStatus
    date: str


class RequestedOut(RunRequestedOut):
    model_id: int


class RunsRequestedOut(TypedDict):
    """The runs that score the asked models and dates, oldest date first."""

    runs: list[RequestedOut]


class UserOut(TypedDict):
    """A user as admins see it: quota in force, where it comes from, and the active models."""

    email: str
    is_admin: bool
    disabled: bool
    quota: int
    quota_source: str  # "user" (set for the user) or "default" ([limits])
    active_models: list[str]


class OutboxOut(TypedDict):
    id: int
    to: str
    subject: str
    status: OutboxStatus
    attempts: int
    last_error: str | None
    next_attempt_at: str | None  # while pending
    created_at: str | None
    sent_at: str | None


class AuditEventOut(TypedDict):
    id: int
    at: str
    actor: str  # a user's email, or cli:<os user>
    action: str  # e.g. model.upload, run.request, user.disable
    target: str  # e.g. model:3, run:17, user:ann@example.com
    detail: dict[str, Any]
