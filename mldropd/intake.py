"""An upload attempt, cheapest check first: no model code runs for an upload refused anyway.

1. size (uploads.py, while the body streams in);
2. the form fields, and the quota for the name known before loading: the form's `name`, else
   the file name's stem (a model object's own `name` is only known once it is loaded);
3. the static scan, then the sandbox (inspect.py), inside a validation slot;
4. the authoritative checks with the name, e-mail and schedule the model object declares
   (the quota again: an object naming a new model while its file names an existing one), then
   the object is stored and recorded (registry.store_and_record).

Every attempt, accepted or refused, is audited (user, file name, size, sha256, the globals the
scan found, outcome and reason): an accepted one in the transaction that records the version,
a refused one in a transaction of its own; each audit event is also one JSON log line.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mldropd import audit
from mldropd.auth import allowed_globals
from mldropd.contract import check_email, check_name, check_schedule
from mldropd.db import session_scope
from mldropd.errors import FieldError, MldropdError, QuotaExceeded, ValidationFailed
from mldropd.inspect import EMPTY_FILE, Inspection, scan_file, validate_file
from mldropd.records import Model, ModelVersion, User
from mldropd.registry import active_model_names, name_from_filename, quota_of, store_and_record
from mldropd.settings import Settings
from mldropd.store.base import ArtifactStore, sha256_file
from mldropd.validation_slots import Ticket

if TYPE_CHECKING:
    from mldropd.daemon import Daemon

log = logging.getLogger(__name__)


@dataclass
class UploadForm:
    """What the user typed next to the file; each wins over the model object's own value."""

    filename: str
    email: str | None = None
    schedule: str | None = None
    name: str | None = None


@dataclass
class Attempt:
    """What the audit keeps of one upload attempt."""

    filename: str = ""
    size: int = 0
    sha256: str | None = None
    scan: dict[str, Any] = field(default_factory=dict)
    stage: str = "receive"  # where it stopped: receive, form, quota, scan, validate, store

    def detail(self) -> dict[str, Any]:
        return {
            "file": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "globals": self.scan.get("globals", []),
            "refused_globals": self.scan.get("refused", []),
            "stage": self.stage,
        }


def precheck(
    engine: Engine, settings: Settings, user: User, form: UploadForm, size: int
) -> tuple[frozenset[str], list[FieldError]]:
    """The file's size, the form fields and the quota, before any model code runs. Returns the
    refused globals an admin allowed for the user and the form's problems, which the caller
    reports with the static scan's (no model code runs for either: every problem at once).
    A full quota is refused at once (409)."""
    problems: list[FieldError] = []
    if size == 0:
        problems.append(FieldError("file", EMPTY_FILE))
    if form.name is not None:
        problems += check_name(form.name)
    if form.email is not None:
        problems += check_email(form.email, "email")
    if form.schedule is not None:
        problems += check_schedule(form.schedule)
    if problems:
        with Session(engine) as s:
            return allowed_globals(s, user.id), problems
    name = form.name or name_from_filename(form.filename)
    with Session(engine) as s:
        exists = s.exec(select(Model.id).where(Model.owner_id == user.id, Model.name == name))
        if exists.first() is None:
            active = active_model_names(s, user.id or 0)
            quota = quota_of(user, settings)
            if len(active) >= quota:
                raise QuotaExceeded(
                    f"you have {len(active)} active models, your quota is {quota} "
                    f"({', '.join(active)}); '{name}' would be a new one. Pause or delete a "
                    "model, or ask an admin for more; to upload a new version of a model, give "
                    "its name in the `name` field",
                    field="quota",
                )
        return allowed_globals(s, user.id), []


def scan_with(
    path: Path, settings: Settings, allowed: frozenset[str], attempt: Attempt,
    problems: list[FieldError],
) -> dict[str, Any]:  # fmt: skip
    """The static scan (unless the file is empty), its facts kept for the audit; raise with
    the form's problems and its own."""
    facts, found = scan_file(path, settings, allowed) if attempt.size else ({}, [])
    attempt.scan = facts
    if problems or found:
        raise ValidationFailed(problems + found)
    return facts


def resolve(
    form: UploadForm, inspection: Inspection, user: User
) -> tuple[str, str, str, list[FieldError]]:
    """The authoritative name, e-mail and schedule: the form's, else the object's, else defaults."""
    summary = inspection.summary or {}
    name = form.name or summary.get("name") or name_from_filename(form.filename)
    email = form.email or summary.get("owner_email") or user.email
    schedule = form.schedule or summary.get("schedule") or "daily"
    problems = check_name(name) + check_email(email, "email") + check_schedule(schedule)
    return name, email, schedule, problems


def record_refusal(engine: Engine, user: User, attempt: Attempt, exc: MldropdError) -> None:
    """Audit a refused attempt (its own transaction: nothing else was recorded)."""
    reason = "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in exc.errors)
    with session_scope(engine) as s:
        audit.record(
            s,
            user.email,
            "model.upload_refused",
            f"user:{user.email}",
            outcome="refused",
            status=exc.status_code,
            reason=reason,
            **attempt.detail(),
        )


async def register(
    daemon: Daemon, user: User, path: Path, form: UploadForm, attempt: Attempt, ticket: Ticket
) -> tuple[Model, ModelVersion]:
    """Check, scan, validate, store and record an uploaded file (see the module's order)."""
    engine, settings = daemon.engine, daemon.settings
    attempt.stage = "form"
    allowed, problems = await anyio.to_thread.run_sync(
        precheck, engine, settings, user, form, attempt.size
    )
    async with daemon.validations.slot(ticket):
        attempt.stage = "scan"
        facts = await anyio.to_thread.run_sync(
            scan_with, path, settings, allowed, attempt, problems
        )
        attempt.stage = ticket.stage = "validate"
        inspection = await anyio.to_thread.run_sync(
            lambda: validate_file(path, settings, facts, daemon.sandboxes())
        )
    attempt.stage = "store"
    return await anyio.to_thread.run_sync(
        _record, engine, daemon.store, settings, user, path, form, inspection, attempt
    )


def register_file(
    engine: Engine,
    store: ArtifactStore,
    settings: Settings,
    user: User,
    path: Path,
    form: UploadForm,
    sandboxes: Any = None,
) -> tuple[Model, ModelVersion]:
    """The same order without a validation slot, for trusted local callers (the demo).

    `sandboxes`: the daemon's fork server (None: one is started for the validation)."""
    attempt = Attempt(filename=form.filename, size=path.stat().st_size, sha256=sha256_file(path))
    try:
        attempt.stage = "form"
        allowed, problems = precheck(engine, settings, user, form, attempt.size)
        attempt.stage = "scan"
        facts = scan_with(path, settings, allowed, attempt, problems)
        attempt.stage = "validate"
        inspection = validate_file(path, settings, facts, sandboxes)
        attempt.stage = "store"
        return _record(engine, store, settings, user, path, form, inspection, attempt)
    except MldropdError as exc:
        record_refusal(engine, user, attempt, exc)
        raise


def _record(
    engine: Engine,
    store: ArtifactStore,
    settings: Settings,
    user: User,
    path: Path,
    form: UploadForm,
    inspection: Inspection,
    attempt: Attempt,
) -> tuple[Model, ModelVersion]:
    name, email, schedule, problems = resolve(form, inspection, user)
    problems = inspection.errors + problems
    if problems or inspection.summary is None:
        raise ValidationFailed(problems or [FieldError("file", "the model could not be checked")])
    with _name_lock(user.id or 0, name):  # one upload of a name at a time: versions don't clash
        return store_and_record(
            engine,
            store,
            settings,
            user,
            path,
            inspection,
            (name, email, schedule),
            attempt.detail(),
        )


def _name_lock(owner_id: int, name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _NAME_LOCKS.setdefault((owner_id, name), threading.Lock())


_LOCKS_GUARD = threading.Lock()
_NAME_LOCKS: dict[tuple[int, str], threading.Lock] = {}
