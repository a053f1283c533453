"""The DQ publish gate: scores of an alert run wait in quarantine until published or discarded."""

from __future__ import annotations

import logging
import shutil

from sqlalchemy.engine import Engine

from mldropd import audit
from mldropd.batch import ledger
from mldropd.batch.write import partition_dir, publish
from mldropd.db import session_scope
from mldropd.errors import Conflict, NotFound
from mldropd.records import ModelRun, User
from mldropd.registry import MAX_ID, get_model
from mldropd.settings import Settings

log = logging.getLogger(__name__)


def _held(s, user: User, run_id: int) -> ModelRun:  # type: ignore[no-untyped-def]
    run = s.get(ModelRun, run_id) if 0 < run_id <= MAX_ID else None
    try:
        if run is None:
            raise NotFound("")
        get_model(s, user, run.model_id)
    except NotFound:  # another user's run answers exactly as a run that does not exist
        raise NotFound(f"run {run_id} not found") from None
    if not run.quarantined:
        raise Conflict(f"run {run_id} has no scores waiting at the DQ gate")
    return run


def publish_held(engine: Engine, settings: Settings, user: User, run_id: int) -> ModelRun:
    """Move a quarantined partition into the scores table (replacing the date's partition)."""
    with session_scope(engine) as s:
        run = _held(s, user, run_id)
        held = partition_dir(settings.dq.quarantine_path, run.date, run.model_id)
        if not held.is_dir():  # removed by hand: say so rather than fail with a traceback
            raise Conflict(f"the held scores of run {run_id} are gone from {held}; discard them")
        publish(held, settings.scores.path, run.date, run.model_id)
        run.quarantined = False
        run.warning = f"published by {user.email} despite the DQ alert"
        audit.record(
            s, user.email, "run.publish", f"run:{run_id}", model_id=run.model_id, date=run.date
        )
    log.info("quarantined scores published", extra={"model_run_id": run_id, "user": user.email})
    return run


def discard_held(engine: Engine, settings: Settings, user: User, run_id: int) -> ModelRun:
    """Delete a quarantined partition; the run counts as failed, so the date can be rescored."""
    with session_scope(engine) as s:
        run = _held(s, user, run_id)
        shutil.rmtree(
            partition_dir(settings.dq.quarantine_path, run.date, run.model_id), ignore_errors=True
        )
        ledger.discard_held(run, f"scores discarded at the DQ gate by {user.email}")
        audit.record(
            s, user.email, "run.discard", f"run:{run_id}", model_id=run.model_id, date=run.date
        )
    log.info("quarantined scores discarded", extra={"model_run_id": run_id, "user": user.email})
    return run
