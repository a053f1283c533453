"""The batch orchestrator: scoring table -> score -> write -> DQ -> report, for one batch run.

Runs in the batch job process (jobs/score_batch.py), never in the daemon. Model code runs one
level further down, in the sandboxed scoring child. Every state change is committed to SQLite
as it happens, so a crash at any point leaves a state the daemon can resume from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import shutil
import statistics
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mldropd.batch.keys import screen_keys
from mldropd.batch.plan import retry_at
from mldropd.batch.quality import check_quality
from mldropd.batch.score import Outcome, score_models
from mldropd.batch.staleness import stale_note, weigh
from mldropd.batch.table import PreparedModel, build_table
from mldropd.batch.write import discard_staging, publish, staging_dir
from mldropd.db import make_engine, session_scope
from mldropd.faults import fault_point
from mldropd.features import FeatureSource
from mldropd.notify.outbox import enqueue
from mldropd.notify.reports import ReportItem, build_report
from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion, utcnow
from mldropd.settings import Settings
from mldropd.states import (
    ModelRunStatus,
    RunStatus,
    check_model_run_transition,
    check_run_transition,
)
from mldropd.store import make_store
from mldropd.text import duration

log = logging.getLogger(__name__)

SLOW_MIN_EXTRA_S = 5.0  # a run is called slow only when it took at least this much longer


class BatchJob:
    """Executes one pending batch run; every step commits what it learnt."""

    def __init__(
        self,
        settings: Settings,
        batch_id: int,
        *,
        engine: Engine | None = None,
        retries: bool = True,
    ) -> None:
        self.settings = settings
        self.batch_id = batch_id
        self.engine = engine or make_engine(settings.database.path)
        self.retries = retries
        self.work = Path(settings.server.work_dir) / f"batch-{batch_id}"
        self.source = FeatureSource(settings.features)
        self._last_beat = 0.0

    # -- state helpers -----------------------------------------------------------------------
    def _set_run(self, run_id: int, status: ModelRunStatus, **fields: object) -> None:
        with session_scope(self.engine) as s:
            run = s.get(ModelRun, run_id)
            assert run is not None
            run.status = check_model_run_transition(run.status, status)
            for key, value in fields.items():
                setattr(run, key, value)
            if status in (ModelRunStatus.SUCCEEDED, ModelRunStatus.FAILED):
                run.finished_at = utcnow()

    def _slow_warning(self, s: Session, model_id: int, seconds: float | None) -> str | None:
        """Flag a run much slower than the model's median of its last 20 successful runs."""
        past = s.exec(
            select(ModelRun.seconds)
            .where(
                ModelRun.model_id == model_id,
                ModelRun.status == ModelRunStatus.SUCCEEDED,
                col(ModelRun.seconds).is_not(None),
            )
            .order_by(col(ModelRun.id).desc())
            .limit(20)
        ).all()
        if seconds is None or len(past) < 3:
            return None
        median = float(statistics.median(past))
        factor = self.settings.scheduler.duration_warning
        # Sub-second jitter is no news: a few seconds more than usual at the least.
        if median > 0 and seconds > factor * median and seconds - median >= SLOW_MIN_EXTRA_S:
            return (
                f"slow: {duration(seconds)} is more than {factor:g} times the median "
                f"{duration(median)} of the model's last {len(past)} runs"
            )
        return None

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat < 5:
            return
        self._last_beat = time.monotonic()
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, self.batch_id)
            if batch is not None:
                batch.heartbeat_at = utcnow()

    # -- steps -------------------------------------------------------------------------------
    def _claim(self) -> tuple[dt.date, list[tuple[ModelRun, Model, ModelVersion]]]:
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, self.batch_id)
            if batch is None:
                raise LookupError(f"batch run {self.batch_id} does not exist")
            if batch.status != RunStatus.RUNNING:
                batch.status = check_run_transition(batch.status, RunStatus.RUNNING)
            batch.pid, batch.started_at, batch.heartbeat_at = os.getpid(), utcnow(), utcnow()
            rows = s.exec(
                select(ModelRun, Model, ModelVersion)
                .join(Model, Model.id == ModelRun.model_id)
                .join(
                    ModelVersion,
                    (ModelVersion.model_id == ModelRun.model_id)
                    & (ModelVersion.version == ModelRun.model_version),
                )
                .where(
                    ModelRun.batch_id == self.batch_id, ModelRun.status == ModelRunStatus.PENDING
                )
            ).all()
            for run, _, _ in rows:
                run.status = check_model_run_transition(run.status, ModelRunStatus.RUNNING)
                run.started_at = utcnow()
            return batch.date, [tuple(r) for r in rows]  # type: ignore[misc]

    def _score(
        self,
        day: dt.date,
        prepared: list[PreparedModel],
        slice_date: dt.date,
        key_filters: list[dict[str, Any]],
    ) -> dict[int, Outcome]:
        tasks, timeouts = [], {}
        for p in prepared:
            assert p.run.id is not None and p.model.id is not None
            contract = p.version.contract
            tasks.append(
                {
                    "model_run_id": p.run.id,
                    "model_id": p.model.id,
                    "model_version": p.version.version,
                    "path": str(p.path),
                    "features": p.features,
                    "input": contract["input"],
                    "call": contract["call"],
                    "output": contract["output"],
                    "entity_key": p.entity_key,
                    "out_dir": str(staging_dir(self.settings.scores.path, self.batch_id, p.run.id)),
                }
            )
            timeouts[p.run.id] = float(
                contract.get("params", {}).get("timeout_s") or self.settings.engine.model_timeout_s
            )
        batch_rows = min(
            [
                p.version.contract.get("params", {}).get("batch_size")
                or self.settings.engine.batch_rows
                for p in prepared
            ]
        )
        request = {
            "features": dataclasses.asdict(self.settings.features),
            "slice_date": slice_date.isoformat(),
            "batch_rows": batch_rows,
            "scored_at": dt.datetime.now(dt.UTC).isoformat(),
            "models": tasks,
            "key_filters": key_filters,  # rows of null or duplicated keys not scored (keys.py)
        }
        engine, why = self._choose_engine(prepared, slice_date)
        log.info("scoring with the %s engine (%s)", engine, why, extra={"run_id": self.batch_id})
        if engine == "spark":
            return self._score_spark(request, timeouts, why)
        return score_models(
            request,
            timeouts=timeouts,
            memory_mb=self.settings.engine.model_memory_mb,
            work_dir=self.work,
            batch_id=self.batch_id,
            heartbeat=self.heartbeat,
        )

    def _choose_engine(self, prepared: list[PreparedModel], slice_date: dt.date) -> tuple[str, str]:
        """One engine for the whole batch, and why: spark if anyone asks, auto by slice size."""
        from mldropd.engines.spark import pyspark_available, under_spark_submit

        cfg = self.settings.engine
        explicit = {
            p.model.name: (p.version.contract.get("params") or {}).get("engine") for p in prepared
        }
        if self.settings.features.kind == "spark_table":
            return "spark", "[features] kind = spark_table"
        who = [name for name, e in explicit.items() if e == "spark"]
        if cfg.default == "spark" or who:
            return "spark", f"requested by {', '.join(who or ['[engine] default'])}"
        if "auto" not in {e or cfg.default for e in explicit.values()}:
            return "local", "requested"
        if under_spark_submit():
            return "spark", "auto, started by spark-submit"
        rows = self.source.count(slice_date)
        if rows < cfg.spark_min_rows:
            return "local", f"auto: {rows} rows < [engine] spark_min_rows {cfg.spark_min_rows}"
        if not pyspark_available():
            return "local", f"auto: {rows} rows, but pyspark is not installed"
        return "spark", f"auto: {rows} rows >= [engine] spark_min_rows {cfg.spark_min_rows}"

    def _score_spark(
        self, request: dict[str, object], timeouts: dict[int, float], why: str
    ) -> dict[int, Outcome]:
        """The Spark engine; when it cannot start, every model run says why."""
        from mldropd.engines.spark import pyspark_available, score_with_spark

        ids = [int(t["model_run_id"]) for t in request["models"]]  # type: ignore[attr-defined]
        if self.settings.features.kind == "duckdb":  # said before Spark's ~40 s start-up
            return {
                i: Outcome(
                    error=f"the Spark engine was requested ({why}) but cannot read [features] "
                    'kind = "duckdb"; set the model\'s params.engine to "local" or "auto"'
                )
                for i in ids
            }
        if not pyspark_available():
            return {
                i: Outcome(
                    error=f"the Spark engine was requested ({why}) but pyspark is not installed "
                    "where the batch job runs; install mldropd[spark] (and Java 17) or set "
                    "engine to local"
                )
                for i in ids
            }
        try:
            return score_with_spark(
                request, self.settings.engine, timeouts=timeouts, heartbeat=self.heartbeat
            )
        except Exception as exc:  # no session (Java missing, master unreachable), bad slice
            log.exception("the Spark engine failed", extra={"run_id": self.batch_id})
            return {
                i: Outcome(error=f"the Spark engine failed: {type(exc).__name__}: {exc}")
                for i in ids
            }

    def _finish_model(
        self,
        day: dt.date,
        p: PreparedModel,
        outcome: Outcome,
        slice_date: dt.date,
        slice_rows: int | None,
        *,
        key_check: dict[str, Any] | None = None,
        stale: str | None = None,
    ) -> None:
        assert p.run.id is not None and p.model.id is not None
        extra = {
            "run_id": self.batch_id,
            "model_run_id": p.run.id,
            "model_id": p.model.id,
            "date": day.isoformat(),
        }
        if not outcome.ok:
            self._set_run(
                p.run.id,
                ModelRunStatus.FAILED,
                error=outcome.error,
                key_check=key_check,
                stale_slice=stale,
            )
            log.warning("model run failed: %s", outcome.error, extra=extra)
            return
        staged = staging_dir(self.settings.scores.path, self.batch_id, p.run.id)
        fault_point("scored")
        try:
            result = check_quality(
                self.source,
                self.settings.scores.path,
                current_part=staged,
                day=day,
                model_id=p.model.id,
                slice_date=slice_date,
                features=p.features,
                entity_key=p.entity_key,
                is_probability=p.version.contract["output"].startswith("proba"),
                slice_rows=slice_rows,
                settings=self.settings.dq,
                overrides={**(p.version.contract.get("dq") or {}), **(p.model.dq or {})},
                importance=p.version.contract.get("importance"),
            )
        except Exception as exc:  # DQ must never lose the scores that were written
            log.exception("DQ failed", extra=extra)
            result = None
            dq_error = f"{type(exc).__name__}: {exc}"
        dq_overrides = {**(p.version.contract.get("dq") or {}), **(p.model.dq or {})}
        gate = dq_overrides.get("gate") or self.settings.dq.gate
        if result is not None:  # a stale slice weighs in before the gate looks
            status, reason = weigh(
                result.report.status, result.report.reason, stale, self.settings.dq.stale_slice
            )
        held = gate == "alert" and result is not None and status == "alert"
        if held:  # the publish gate: keep the scores, out of the scores table
            publish(staged, self.settings.dq.quarantine_path, day, p.model.id)
        else:
            publish(staged, self.settings.scores.path, day, p.model.id)
        fault_point("published")
        with session_scope(self.engine) as s:
            run = s.get(ModelRun, p.run.id)
            assert run is not None
            run.status = check_model_run_transition(run.status, ModelRunStatus.SUCCEEDED)
            run.rows, run.seconds, run.slice_date = outcome.rows, outcome.seconds, slice_date
            run.finished_at = utcnow()
            run.warning = self._slow_warning(s, p.model.id, outcome.seconds)
            run.quarantined = held
            run.key_check, run.stale_slice = key_check, stale
            if result is not None:
                r = result.report
                s.add(
                    DQResult(
                        model_run_id=p.run.id,
                        model_id=p.model.id,
                        date=day,
                        reference_date=result.reference_date,
                        psi=r.psi,
                        psi_noise=r.psi_noise,
                        auc=r.auc,
                        ks=r.ks,
                        status=status,
                        reason=reason,
                        details=r.details,
                    )
                )
            else:
                s.add(
                    DQResult(
                        model_run_id=p.run.id,
                        model_id=p.model.id,
                        date=day,
                        status="warn",
                        reason=f"DQ could not be computed: {dq_error}",
                    )
                )
        log.info(
            "model run succeeded rows=%s seconds=%.2f",
            outcome.rows,
            outcome.seconds or 0,
            extra=extra,
        )

    def report(self) -> None:
        """One email per owner for this batch (several models in one message)."""
        now = utcnow()
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, self.batch_id)
            assert batch is not None
            rows = s.exec(
                select(ModelRun, Model)
                .join(Model, Model.id == ModelRun.model_id)
                .where(ModelRun.batch_id == self.batch_id)
            ).all()
            by_owner: dict[str, list[ReportItem]] = defaultdict(list)
            for run, model in rows:
                dq = s.exec(select(DQResult).where(DQResult.model_run_id == run.id)).first()
                retry = None
                if run.status == ModelRunStatus.FAILED and self.retries:
                    retry = retry_at(
                        run.attempt,
                        self.settings.scheduler.max_attempts,
                        self.settings.scheduler.retry_delay,
                        now,
                    )
                by_owner[model.email].append(
                    ReportItem(
                        model_id=model.id or 0,
                        model_name=model.name,
                        model_version=run.model_version,
                        date=run.date,
                        status=run.status,
                        attempt=run.attempt,
                        max_attempts=self.settings.scheduler.max_attempts,
                        rows=run.rows,
                        seconds=run.seconds,
                        error=run.error,
                        retry_at=retry,
                        dq=None
                        if dq is None
                        else {
                            "status": dq.status,
                            "reason": dq.reason,
                            "psi": dq.psi,
                            "psi_noise": dq.psi_noise,
                            "auc": dq.auc,
                            "ks": dq.ks,
                            "reference_date": dq.reference_date,
                        },
                        recovered=run.status == ModelRunStatus.SUCCEEDED and run.attempt > 1,
                        stale_slice=run.stale_slice,
                        keys=(run.key_check or {}).get("note"),
                        note=" ".join(
                            filter(
                                None,
                                [
                                    "Scores held back by the DQ publish gate: publish or "
                                    "discard them on the model page."
                                    if run.quarantined
                                    else None,
                                    f"Note: {run.warning}." if run.warning else None,
                                ],
                            )
                        )
                        or None,
                    )
                )
            batch.reported = True
            for owner, items in by_owner.items():
                subject, text, html = build_report(owner, items, self.settings.base_url)
                enqueue(s, owner, subject, text, html)

    def close(self, error: str | None = None) -> RunStatus:
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, self.batch_id)
            assert batch is not None
            runs = s.exec(select(ModelRun).where(ModelRun.batch_id == self.batch_id)).all()
            for run in runs:  # nothing may stay running once the job is over
                if run.status in (ModelRunStatus.PENDING, ModelRunStatus.RUNNING):
                    run.status = ModelRunStatus.FAILED
                    run.error = error or "the batch ended before this model was scored"
                    run.finished_at = utcnow()
            ok = all(r.status == ModelRunStatus.SUCCEEDED for r in runs)
            batch.status = check_run_transition(
                batch.status, RunStatus.SUCCEEDED if ok and not error else RunStatus.FAILED
            )
            batch.error, batch.finished_at = error, utcnow()
            return RunStatus(batch.status)

    def _wait_for_data(
        self, day: dt.date, runs: list[tuple[ModelRun, Model, ModelVersion]]
    ) -> bool:
        """Sensor: the slice is late. Put the batch back to wait, unless its deadline passed."""
        cfg = self.settings.scheduler
        now = utcnow()
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, self.batch_id)
            assert batch is not None
            created = (
                batch.created_at.replace(tzinfo=dt.UTC)
                if batch.created_at.tzinfo is None
                else batch.created_at
            )
            deadline = created + dt.timedelta(seconds=cfg.sensor_deadline)
            missing = self.source.describe_missing(day)
            if now >= deadline:
                return False
            retry = min(now + dt.timedelta(seconds=cfg.sensor_interval), deadline)
            batch.status = check_run_transition(batch.status, RunStatus.PENDING)
            batch.not_before, batch.pid = retry, None
            for run, _, _ in runs:
                row = s.get(ModelRun, run.id)
                assert row is not None
                row.status = check_model_run_transition(row.status, ModelRunStatus.PENDING)
                row.started_at = None
                row.error = (
                    f"waiting for data: {missing}; next check at {retry:%Y-%m-%d %H:%M} "
                    f"UTC, gives up at {deadline:%Y-%m-%d %H:%M} UTC"
                )
        log.info(
            "feature slice missing; batch waits until %s",
            retry.isoformat(),
            extra={"run_id": self.batch_id, "date": day.isoformat()},
        )
        return True

    def execute(self) -> RunStatus:
        """Run every step; the batch ends succeeded or failed, never running."""
        started = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        try:
            day, runs = self._claim()
            fault_point("claimed")
            log.info(
                "batch started with %d model(s)",
                len(runs),
                extra={"run_id": self.batch_id, "date": day.isoformat()},
            )
            table = build_table(
                self.source, make_store(self.settings.storage), day, runs, self.work / "models"
            )
            if table.slice is None:
                if self._wait_for_data(day, runs):
                    return RunStatus.PENDING
                waited = duration(self.settings.scheduler.sensor_deadline)
                table.rejected = {
                    run_id: f"gave up waiting for the feature slice after {waited}: {reason}"
                    for run_id, reason in table.rejected.items()
                }
            for run_id, reason in table.rejected.items():
                self._set_run(run_id, ModelRunStatus.FAILED, error=reason)
            if table.models and table.slice is not None:
                cfg = self.settings.features
                stale = stale_note(table.slice, cfg.max_staleness_days)
                keys = screen_keys(
                    self.source,
                    table.slice.date,
                    [(p.run.id, p.entity_key) for p in table.models if p.run.id is not None],
                    cfg.duplicate_keys,
                    cfg.null_keys,
                )
                for run_id, reason in keys.rejected.items():  # before any model code runs
                    self._set_run(
                        run_id,
                        ModelRunStatus.FAILED,
                        error=reason,
                        key_check=keys.records[run_id],
                        stale_slice=stale,
                    )
                table.models = [p for p in table.models if p.run.id not in keys.rejected]
            if table.models and table.slice is not None:
                slice_rows = self.source.count(table.slice.date)
                outcomes = self._score(day, table.models, table.slice.date, keys.filters)
                for p in table.models:
                    assert p.run.id is not None
                    self._finish_model(
                        day,
                        p,
                        outcomes.get(p.run.id, Outcome(error="no result from the scoring process")),
                        table.slice.date,
                        keys.entities.get(p.run.id, slice_rows),
                        key_check=keys.records.get(p.run.id),
                        stale=stale,
                    )
            fault_point("checked")
            self.report()
            status = self.close()
        except Exception as exc:
            log.exception("batch failed", extra={"run_id": self.batch_id})
            status = self.close(
                f"internal error in the batch job: {type(exc).__name__}: "
                f"{exc}\n{traceback.format_exc(limit=-3)}"
            )
        finally:
            discard_staging(self.settings.scores.path, self.batch_id)
            shutil.rmtree(self.work, ignore_errors=True)
        log.info(
            "batch %s in %.1f s",
            status,
            time.monotonic() - started,
            extra={"run_id": self.batch_id},
        )
        return status
