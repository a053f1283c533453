"""The daemon's moving parts in one object: database, store, batch runner and scheduler.

The web app (app.py) starts and stops it in its lifespan; the CLI uses it without the
scheduler for `mldropd run`.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text
from sqlmodel import col, select

from mldropd.batch.plan import due_models, plan_batch
from mldropd.batch.runner import Runner
from mldropd.db import init_db, make_engine, session_scope
from mldropd.features import FeatureSource
from mldropd.notify.outbox import deliver_pending
from mldropd.records import BatchRun, Model, ModelRun, SweepLog
from mldropd.sandbox.setup import Sandboxes, describe_layers
from mldropd.scheduling import jobs
from mldropd.scheduling.scheduler import (
    OUTBOX_JOB,
    SWEEP_JOB,
    add_resume,
    add_retry,
    build_scheduler,
    ensure_jobs,
    sweep_dates_between,
)
from mldropd.settings import Settings
from mldropd.states import ModelStatus, SweepStatus, Trigger
from mldropd.store import make_store
from mldropd.validation_slots import ValidationSlots

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, *, with_scheduler: bool = True) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database.path)
        self.store = make_store(settings.storage)
        init_db(self.engine, settings.storage)  # a migration may move the store's files
        self.validations = ValidationSlots.from_settings(settings)
        self.tz = ZoneInfo(settings.scheduler.timezone)
        self.scheduler: BackgroundScheduler | None = (
            build_scheduler(settings) if with_scheduler else None
        )
        self.runner = Runner(
            settings,
            self.engine,
            on_retry=self.schedule_retry if with_scheduler else None,
            on_wait=self.schedule_wait if with_scheduler else None,
        )
        self._sweep_lock = threading.Lock()
        self._sandboxes: Sandboxes | None = None
        self._sandboxes_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the sandbox fork server (its probe must find the required layers), resume
        interrupted batches, start the scheduler, catch up on missed sweeps."""
        sandboxes = self.sandboxes(batch_jobs=True)
        sandboxes.check()
        log.info("sandbox layers: %s", "; ".join(describe_layers(
            sandboxes.probe, self.settings.sandbox.require)))  # fmt: skip
        self.runner.sandboxes = sandboxes  # batch jobs are forked from the fork server
        self.runner.start()
        if self.scheduler is not None:
            jobs.bind(self)
            self.scheduler.start()
            ensure_jobs(self.scheduler, self.settings)
            self.sweep()  # catch-up: sweep dates missed while the daemon was down
        log.info("daemon started")

    def stop(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
            jobs.bind(None)
        self.runner.stop(self.settings.scheduler.shutdown_grace_s)
        if self._sandboxes is not None:
            self._sandboxes.stop()
            self._sandboxes = None
        self.engine.dispose()
        log.info("daemon stopped")

    def sandboxes(self, *, batch_jobs: bool = False) -> Sandboxes:
        """The daemon's fork server (started at the first need; it keeps importing meanwhile)."""
        with self._sandboxes_lock:
            if self._sandboxes is None:
                self._sandboxes = Sandboxes.start(self.settings, batch_jobs=batch_jobs, wait=False)
            return self._sandboxes

    def now(self) -> dt.datetime:
        return dt.datetime.now(self.tz)

    def today(self) -> dt.date:
        return self.now().date()

    # -- runs --------------------------------------------------------------------------------
    def run_models(
        self,
        day: dt.date,
        models: list[Model],
        trigger: Trigger,
        *,
        force: bool = False,
        submit: bool = True,
    ) -> tuple[int | None, dict[int, ModelRun]]:
        """Plan one batch for day over models; queue it. Returns (batch id, model run per model)."""
        with session_scope(self.engine) as s:
            batch, covered = plan_batch(s, day, trigger, models, force=force)
            batch_id = batch.id if batch is not None else None
        if batch_id is not None and submit:
            self.runner.submit(batch_id)
        return batch_id, covered

    def sweep(self, now: dt.datetime | None = None) -> list[int]:
        """Plan the sweep's dates not planned yet: today's, and missed ones within catch-up."""
        now = now or self.now()
        cfg = self.settings.scheduler
        with self._sweep_lock:
            with session_scope(self.engine) as s:
                day_col = col(SweepLog.date)
                last = s.exec(select(day_col).order_by(day_col.desc())).first()
            window_start = now.date() - dt.timedelta(days=cfg.catchup_days)
            first = last + dt.timedelta(days=1) if last else now.date()
            batch_ids = []
            for day in sweep_dates_between(self.settings, first, now):
                if day < window_start:
                    self._log_sweep(
                        day,
                        SweepStatus.SKIPPED,
                        (
                            f"missed while the daemon was down; older than the catch-up window of "
                            f"{cfg.catchup_days} days (backfill it with `mldropd run --date {day}`)"
                        ),
                    )
                    continue
                trigger = Trigger.SCHEDULE if day == now.date() else Trigger.CATCHUP
                with session_scope(self.engine) as s:
                    models = due_models(s, day)
                batch_id, _ = self.run_models(day, models, trigger)
                self._log_sweep(day, SweepStatus.PLANNED, f"{len(models)} model(s) due")
                log.info(
                    "sweep planned %d due model(s)",
                    len(models),
                    extra={"date": day.isoformat(), "run_id": batch_id},
                )
                if batch_id is not None:
                    batch_ids.append(batch_id)
            return batch_ids

    def _log_sweep(self, day: dt.date, status: SweepStatus, reason: str) -> None:
        with session_scope(self.engine) as s:
            if s.get(SweepLog, day) is None:
                s.add(SweepLog(date=day, status=status, reason=reason))
        if status == SweepStatus.SKIPPED:
            log.warning("sweep date skipped: %s", reason, extra={"date": day.isoformat()})

    def retry(self, day: dt.date, model_ids: list[int]) -> int | None:
        """A retry job fired: re-plan the models of that date that have not succeeded yet."""
        with session_scope(self.engine) as s:
            models = list(
                s.exec(
                    select(Model).where(
                        col(Model.id).in_(model_ids), Model.status == ModelStatus.ACTIVE
                    )
                )
            )
        batch_id, _ = self.run_models(day, models, Trigger.RETRY)
        log.info("retry planned", extra={"date": day.isoformat(), "run_id": batch_id})
        return batch_id

    def schedule_retry(self, day: dt.date, model_ids: list[int], when: dt.datetime) -> None:
        if self.scheduler is not None:
            add_retry(self.scheduler, day, model_ids, when)
            log.info(
                "retry scheduled at %s for models %s",
                when.isoformat(),
                model_ids,
                extra={"date": day.isoformat()},
            )

    def schedule_wait(self, batch_id: int, when: dt.datetime) -> None:
        """The sensor: run a batch waiting for its feature slice again at `when`."""
        if self.scheduler is not None:
            add_resume(self.scheduler, batch_id, when)

    def resume(self, batch_id: int) -> None:
        self.runner.submit(batch_id)

    def deliver_outbox(self) -> None:
        deliver_pending(self.engine, self.settings.email)

    # -- health ------------------------------------------------------------------------------
    def readiness(self) -> dict[str, str]:
        """Each check's state in words ("ok" or what is wrong)."""
        checks: dict[str, str] = {}
        try:
            with session_scope(self.engine) as s:
                s.exec(select(BatchRun.id).limit(1)).all()
            self._probe_write()
            checks["database"] = "ok"
        except Exception as exc:
            cause = getattr(exc, "orig", None) or exc  # the driver's words, not the SQL
            checks["database"] = f"database {self.settings.database.path} unusable: {cause}"
        try:
            self.store.check()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = str(exc)
        if self.scheduler is not None:
            checks["scheduler"] = self._scheduler_check()
        if self.settings.features.kind != "spark_table":  # only the batch job runs Spark
            checks["features"] = self._features_check()
        checks["disk"] = self._disk_check()
        checks["sandbox"] = self._sandbox_check()
        return checks

    def _sandbox_check(self) -> str:
        if self._sandboxes is None:
            return "ok"  # started with the first upload or batch
        try:
            self._sandboxes.check()
        except Exception as exc:
            return str(exc)
        return "ok"

    def sandbox_layers(self) -> dict[str, Any]:
        """Which sandbox layers are in force, which are missing and why (for /readyz)."""
        if self._sandboxes is None:
            return {}
        found = self._sandboxes.probe
        return {
            "in_force": sorted(k for k, v in found.items() if v.get("available")),
            "missing": {k: v.get("detail") for k, v in found.items() if not v.get("available")},
            "required": list(self.settings.sandbox.require),
        }

    def _probe_write(self) -> None:
        """A real write, rolled back: proves the file is writable and the write lock obtainable."""
        with self.engine.connect() as conn:
            trans = conn.begin()
            try:
                conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            finally:
                trans.rollback()

    def _scheduler_check(self) -> str:
        assert self.scheduler is not None
        if not self.scheduler.running:
            return "the scheduler is not running"
        missing = [j for j in (SWEEP_JOB, OUTBOX_JOB) if self.scheduler.get_job(j) is None]
        if missing:
            return f"the scheduler is running without its job(s) {', '.join(missing)}"
        return "ok"

    def _features_check(self) -> str:
        cfg = self.settings.features
        try:
            latest = FeatureSource(cfg).latest()
        except Exception as exc:
            return f"the feature store cannot be read: {exc}"
        if latest is None:
            where = f"table {cfg.table} in {cfg.path}" if cfg.kind == "duckdb" else cfg.path
            return f"the feature store ({where}) has no slice ({cfg.date_column}=YYYY-MM-DD)"
        return "ok"

    def _disk_check(self) -> str:
        s = self.settings
        folders = [Path(s.database.path).parent, Path(s.scores.path), Path(s.server.work_dir)]
        if s.storage.kind == "local":
            folders.append(Path(s.storage.path))
        for folder in folders:
            existing = next(p for p in (folder, *folder.parents) if p.exists())
            free_mb = shutil.disk_usage(existing).free // (1 << 20)
            if free_mb < s.server.min_free_disk_mb:
                return (
                    f"only {free_mb} MB free on the file system of {folder} "
                    f"(below [server] min_free_disk_mb = {s.server.min_free_disk_mb})"
                )
        return "ok"
