"""The model registry: register uploads as models and versions; read, change and delete them.

Only this module writes models. The caller (API, page or CLI) has already authenticated the
user; every lookup here is scoped to the user (admins see everyone's)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mldropd import audit
from mldropd.contract import DQ_KEYS, check_dq, check_email, check_schedule
from mldropd.db import session_scope
from mldropd.errors import Conflict, FieldError, NotFound, QuotaExceeded, ValidationFailed
from mldropd.inspect import Inspection
from mldropd.records import DQResult, Model, ModelRun, ModelVersion, User, utcnow
from mldropd.scheduling.schedules import parse_schedule
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, ModelStatus
from mldropd.store.base import ArtifactStore, artifact_key, manifest_key, model_prefix, sha256_file

log = logging.getLogger(__name__)


def name_from_filename(filename: str) -> str:
    """Default model name: the file name stem, lower-cased, unsafe characters replaced."""
    stem = Path(filename.replace("\\", "/")).name.rsplit(".", 1)[0].lower()
    return re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")[:64]


def quota_of(user: User, settings: Settings) -> int:
    return user.quota if user.quota is not None else settings.limits.active_models_per_user


MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot exist (and cannot be bound)


def get_model(session: Session, user: User, model_id: int) -> Model:
    """The user's model (any model for an admin); another user's model is not found."""
    model = session.get(Model, model_id) if 0 < model_id <= MAX_ID else None
    if model is None or (model.owner_id != user.id and not user.is_admin):
        raise NotFound(f"model {model_id} not found")
    return model


def store_and_record(
    engine: Engine,
    store: ArtifactStore,
    settings: Settings,
    user: User,
    upload: Path,
    inspection: Inspection,
    names: tuple[str, str, str],
    attempt: dict[str, Any],
) -> tuple[Model, ModelVersion]:
    """Store a validated upload and record it as a new model or version, audited with `attempt`.

    The object is stored inside the transaction that records it, under the ids it gets there
    (users/<user id>/models/<model id>/v<n>/): a failed store rolls the rows back, a failed
    commit deletes the object. SQLite's write lock is held while the file is copied (seconds
    for the largest upload; other writers wait up to the busy timeout of 30 s).
    """
    name, email, schedule = names
    summary = inspection.summary
    assert summary is not None
    digest, size = sha256_file(upload), upload.stat().st_size
    key = ""
    try:
        with session_scope(engine) as s:
            model = s.exec(
                select(Model).where(Model.owner_id == user.id, Model.name == name)
            ).first()
            if model is None:
                _check_quota(s, user, settings)
                model = Model(owner_id=user.id or 0, name=name, email=email, schedule=schedule)
                s.add(model)
                s.flush()  # its id names its folder
                version = 1
            else:
                newest = s.exec(
                    select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
                ).one()
                version = (newest or 0) + 1
                model.email, model.schedule, model.updated_at = email, schedule, utcnow()
            model.version = version
            key = artifact_key(user.id or 0, model.id or 0, version)
            store.put_file(key, upload)
            manifest = {
                "sha256": digest,
                "size": size,
                "uploaded_by": user.email,
                "uploaded_at": utcnow().isoformat(),
                "contract": summary,
            }
            store.put_bytes(manifest_key(key), json.dumps(manifest, indent=2).encode())
            row = ModelVersion(
                model_id=model.id or 0,
                version=version,
                artifact_key=key,
                sha256=digest,
                size=size,
                features=summary["features"],
                contract=summary,
                dry_run=inspection.dry_run,
                warnings=inspection.warnings,
                scan=inspection.scan,
                uploaded_by=user.email,
            )
            s.add(row)
            audit.record(
                s,
                user.email,
                "model.upload",
                f"model:{model.id}",
                outcome="accepted",
                name=name,
                version=version,
                functions=bool(inspection.scan.get("has_functions")),
                allowed_globals=inspection.scan.get("allowed", []),
                **{**attempt, "sha256": digest, "size": size, "stage": "stored"},
            )
    except BaseException:
        if key:
            store.delete_prefix(key.rsplit("/", 1)[0] + "/")
        raise
    log.info(
        "model uploaded: %s v%d (%d bytes)",
        name,
        version,
        size,
        extra={"model_id": model.id, "user": user.email},
    )
    prune_versions(engine, store, settings, model.id or 0)
    return model, row


def _check_quota(session: Session, user: User, settings: Settings) -> None:
    active = session.exec(
        select(Model.name).where(Model.owner_id == user.id, Model.status == ModelStatus.ACTIVE)
    ).all()
    quota = quota_of(user, settings)
    if len(active) >= quota:
        raise QuotaExceeded(
            f"you have {len(active)} active models, your quota is {quota} "
            f"({', '.join(sorted(active))}); pause or delete one, or ask an admin for more",
            field="quota",
        )


def update_model(
    engine: Engine, settings: Settings, user: User, model_id: int, changes: dict[str, Any]
) -> Model:
    """Apply a PATCH: schedule, email, status (active/paused), version (roll back)."""
    allowed = {"schedule", "email", "status", "version", "dq"}
    problems = [
        FieldError(k, f"`{k}` cannot be changed; use one of {', '.join(sorted(allowed))}")
        for k in changes
        if k not in allowed
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
    if problems:
        raise ValidationFailed(problems)
    with session_scope(engine) as s:
        model = get_model(s, user, model_id)
        if "version" in changes:
            exists = s.exec(
                select(ModelVersion).where(
                    ModelVersion.model_id == model.id, ModelVersion.version == changes["version"]
                )
            ).first()
            if exists is None:
                raise ValidationFailed(
                    [
                        FieldError(
                            "version", (f"model {model.name} has no version {changes['version']!r}")
                        )
                    ]
                )
            model.version = exists.version
        if changes.get("status") == ModelStatus.ACTIVE and model.status != ModelStatus.ACTIVE:
            owner = s.get(User, model.owner_id)
            assert owner is not None
            _check_quota(s, owner, settings)
        if "schedule" in changes:
            model.schedule = parse_schedule(changes["schedule"]).text
        if "dq" in changes:  # a value of null removes that override
            model.dq = {k: v for k, v in {**model.dq, **changes["dq"]}.items() if v is not None}
        audit.record_model_change(s, user.email, model, changes)
        for key in ("email", "status"):
            if key in changes:
                setattr(model, key, changes[key])
        model.updated_at = utcnow()
    log.info(
        "model changed: %s",
        ", ".join(sorted(changes)),
        extra={"model_id": model_id, "user": user.email},
    )
    return model


def delete_model(engine: Engine, store: ArtifactStore, user: User, model_id: int) -> None:
    """Stop scheduling and remove the artifacts and records; the scores table keeps its scores."""
    with session_scope(engine) as s:
        model = get_model(s, user, model_id)
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
            s, user.email, "model.delete", f"model:{model_id}", name=model.name, owner=owner.email
        )
    store.delete_prefix(prefix)
    log.info("model deleted", extra={"model_id": model_id, "user": user.email})


def visible_models(query: Any, user: User, owner: str | None = None) -> Any:
    """Restrict a query on Model to the user's models; an admin sees all, or one owner's."""
    if not user.is_admin:
        return query.where(Model.owner_id == user.id)
    if owner:
        return query.join(User, User.id == Model.owner_id).where(User.email == owner.lower())
    return query


def list_models(session: Session, user: User, owner: str | None = None) -> list[Model]:
    """The user's models; an admin sees all, or one owner's with owner=<email>."""
    return list(session.exec(visible_models(select(Model).order_by(Model.name), user, owner)))


def count_models(session: Session, user: User) -> int:
    """How many models the user has (an admin: all)."""
    query = visible_models(select(func.count()).select_from(Model), user)
    return int(session.exec(query).one())


def versions(session: Session, model_id: int) -> list[ModelVersion]:
    return list(
        session.exec(
            select(ModelVersion)
            .where(ModelVersion.model_id == model_id)
            .order_by(col(ModelVersion.version).desc())
        )
    )


# ---- versions kept and per-user quotas ---------------------------------------------------------

_VERSION_FOLDER = re.compile(r"v(\d+)/")


def prune_versions(
    engine: Engine, store: ArtifactStore, settings: Settings, model_id: int
) -> list[int]:
    """Delete the versions beyond ``limits.versions_kept``: their rows, then their objects.

    Kept whatever their age: the version being scored (``Model.version``, an older one after a
    rollback) and versions that a pending or running model run is about to score. Never raises:
    the upload that called it has been committed; a store failure leaves orphans that
    ``mldropd store check`` lists and the next pruning of the model removes.
    """
    try:
        with session_scope(engine) as s:
            model = s.get(Model, model_id)
            owner = s.get(User, model.owner_id) if model is not None else None
            if model is None or owner is None:
                return []
            rows = versions(s, model_id)  # newest first
            busy = s.exec(
                select(ModelRun.model_version).where(
                    ModelRun.model_id == model_id,
                    col(ModelRun.status).in_([ModelRunStatus.PENDING, ModelRunStatus.RUNNING]),
                )
            ).all()
            keep = {v.version for v in rows[: settings.limits.versions_kept]}
            keep |= {model.version, *busy}
            doomed = [v for v in rows if v.version not in keep]
            for row in doomed:
                s.delete(row)
            prefix, newest = model_prefix(model.owner_id, model_id), rows[0].version if rows else 0
        if not doomed:
            return []
        # Rows go first: a failure below leaves objects without rows (orphans), never the reverse.
        for folder in _stale_folders(store, prefix, keep, newest):
            store.delete_prefix(folder)
    except Exception:
        log.exception("pruning old versions failed", extra={"model_id": model_id})
        return []
    gone = sorted(v.version for v in doomed)
    log.info(
        "old versions deleted: %s (keeping %d)",
        ", ".join(f"v{n}" for n in gone),
        settings.limits.versions_kept,
        extra={"model_id": model_id},
    )
    return gone


def _stale_folders(store: ArtifactStore, prefix: str, keep: set[int], newest: int) -> list[str]:
    """Version folders under the model's prefix that no kept row uses.

    Only below the newest version: a folder above it may be an upload still in flight.
    """
    found: set[int] = set()
    for key in store.list(prefix):
        match = _VERSION_FOLDER.match(key[len(prefix) :])
        if match:
            found.add(int(match.group(1)))
    return [f"{prefix}v{n}/" for n in sorted(found) if n not in keep and n < newest]


def active_model_names(session: Session, user_id: int) -> list[str]:
    """Names of the user's active models, sorted (what counts against the quota)."""
    return sorted(
        session.exec(
            select(Model.name).where(Model.owner_id == user_id, Model.status == ModelStatus.ACTIVE)
        ).all()
    )


def set_quota(
    engine: Engine, settings: Settings, email: str, quota: Any, *, actor: str = ""
) -> tuple[User, list[str]]:
    """Set a user's quota of active models (None: back to the configured default).

    Returns the user and its active models. Lowering a quota below the active count pauses
    nothing: it stops new models and re-activations until the user is under it again.
    """
    if quota is not None and (isinstance(quota, bool) or not isinstance(quota, int) or quota < 0):
        raise ValidationFailed(
            [FieldError("quota", f"`quota` must be a whole number >= 0 or null, not {quota!r}")]
        )
    address = email.strip().lower()
    with session_scope(engine) as s:
        user = s.exec(select(User).where(User.email == address)).first()
        if user is None:
            raise NotFound(f"no user {address}", field="email")
        user.quota = quota
        active = active_model_names(s, user.id or 0)
        audit.record(s, actor, "user.set_quota", f"user:{address}", quota=quota)
    log.info(
        "quota set to %s",
        quota if quota is not None else f"the default ({settings.limits.active_models_per_user})",
        extra={"user": address},
    )
    return user, active
