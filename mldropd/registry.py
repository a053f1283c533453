"""The model registry: record uploads as models and versions, prune old versions, quotas.

Reads, changes and deletes of models, with the ownership check, are the service layer's
(mldropd.services.models)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, func, select

from mldropd import audit
from mldropd.db import session_scope
from mldropd.errors import FieldError, NotFound, QuotaExceeded, ValidationFailed
from mldropd.inspect import Inspection
from mldropd.records import Model, ModelRun, ModelVersion, User, utcnow
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
                check_quota(s, user, settings)
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


def check_quota(session: Session, user: User, settings: Settings) -> None:
    """Refuse a new active model of the user's when the quota is reached (QuotaExceeded)."""
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
