"""The daemon's moving parts in one object: database, store, batch runner and scheduler.

The web app (app.py) starts and stops it in its lifespan; the CLI uses it without the
scheduler for `mldropd run`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler
from sqlmodel import col, select

from mldropd.batch.plan import due_models, plan_batch
from mldropd.batch.runner import Runner
from mldropd.db import init_db, make_engine, session_scope
from mldropd.notify.outbox import deliver_pending
from mldropd.records import BatchRun, Model, ModelRun, SweepLog
from mldropd.scheduling import jobs
from mldropd.scheduling.scheduler import (
    add_retry,
    build_scheduler,
    ensure_jobs,
    sweep_dates_between,
)
from mldropd.settings import Settings
from mldropd.states import ModelStatus, Trigger
from mldropd.store import make_store

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, *, with_scheduler: bool = True) -> None:
        self.settings = settings
        self.engine = make_engine(settings.database.path)
        init_db(self.engine)
        self.store = make_store(settings.storage)
        self.tz = ZoneInfo(settings.scheduler.timezone)
        self.scheduler: BackgroundScheduler | None = (
            build_scheduler(settings) if with_scheduler else None
        )
        self.runner = Runner(
            settings, self.engine, on_retry=self.schedule_retry if with_scheduler else None
        )
        self._sweep_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Resume interrupted batches, start the scheduler, catch up on missed sweeps."""
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
        self.runner.stop()
        self.engine.dispose()
        log.info("daemon stopped")

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
                last = s.exec(select(SweepLog.date).order_by(col(SweepLog.date).desc())).first()
            window_start = now.date() - dt.timedelta(days=cfg.catchup_days)
            first = last + dt.timedelta(days=1) if last else now.date()
            batch_ids = []
            for day in sweep_dates_between(self.settings, first, now):
                if day < window_start:
                    self._log_sweep(
                        day,
                        "skipped",
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
                self._log_sweep(day, "planned", f"{len(models)} model(s) due")
                log.info(
                    "sweep planned %d due model(s)",
                    len(models),
                    extra={"date": day.isoformat(), "run_id": batch_id},
                )
                if batch_id is not None:
                    batch_ids.append(batch_id)
            return batch_ids

    def _log_sweep(self, day: dt.date, status: str, reason: str) -> None:
        with session_scope(self.engine) as s:
            if s.get(SweepLog, day) is None:
                s.add(SweepLog(date=day, status=status, reason=reason))
        if status == "skipped":
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

    def deliver_outbox(self) -> None:
        deliver_pending(self.engine, self.settings.email)

    # -- health ------------------------------------------------------------------------------
    def readiness(self) -> dict[str, str]:
        """Each check's state in words ("ok" or what is wrong)."""
        checks: dict[str, str] = {}
        try:
            with session_scope(self.engine) as s:
                s.exec(select(BatchRun.id).limit(1)).all()
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"database {self.settings.database.path} unusable: {exc}"
        try:
            self.store.check()
            checks["store"] = "ok"
        except Exception as exc:
            checks["store"] = str(exc)
        if self.scheduler is not None:
            running = self.scheduler.running and self.scheduler.get_job("sweep") is not None
            checks["scheduler"] = "ok" if running else "scheduler is not running"
        return checks
