"""The DQ publish gate: scores of an alert run wait in quarantine until published or discarded.

Both act on a held run inside the caller's transaction (services.runs: the ownership check and
the audit row are in that transaction too); a run with nothing held is a Conflict.
"""

from __future__ import annotations

import logging
import shutil

from mldropd.batch import ledger
from mldropd.batch.write import partition_dir, publish
from mldropd.errors import Conflict
from mldropd.records import ModelRun
from mldropd.settings import Settings

log = logging.getLogger(__name__)


def _check_held(run: ModelRun) -> None:
    if not run.quarantined:
        raise Conflict(f"run {run.id} has no scores waiting at the DQ gate")


def publish_held(settings: Settings, run: ModelRun, by: str) -> None:
    """Move a quarantined partition into the scores table (replacing the date's partition)."""
    _check_held(run)
    held = partition_dir(settings.dq.quarantine_path, run.date, run.model_id)
    if not held.is_dir():  # removed by hand: say so rather than fail with a traceback
        raise Conflict(f"the held scores of run {run.id} are gone from {held}; discard them")
    publish(held, settings.scores.path, run.date, run.model_id)
    run.quarantined = False
    run.warning = f"published by {by} despite the DQ alert"
    log.info("quarantined scores published", extra={"model_run_id": run.id, "user": by})


def discard_held(settings: Settings, run: ModelRun, by: str) -> None:
    """Delete a quarantined partition; the run counts as failed, so the date can be rescored."""
    _check_held(run)
    shutil.rmtree(
        partition_dir(settings.dq.quarantine_path, run.date, run.model_id), ignore_errors=True
    )
    ledger.discard_held(run, f"scores discarded at the DQ gate by {by}")
    log.info("quarantined scores discarded", extra={"model_run_id": run.id, "user": by})
