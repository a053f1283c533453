"""The batch job: scoring table -> score -> write -> DQ -> report, for one batch run.

Runs in the batch job process (forked by the daemon's fork server, or in `mldropd run`), never
in the daemon's web process. Model code runs one level further down, in sandboxed model hosts.
Every state change goes through the ledger and is committed as it happens, so a crash at any
point leaves a state the daemon can resume from.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import shutil
import statistics
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mldropd.batch import ledger
from mldropd.batch.keys import KeyScreen, screen_keys
from mldropd.batch.progress import BatchProgress
from mldropd.batch.report import report_batches
from mldropd.batch.staleness import stale_note, weigh
from mldropd.batch.table import PreparedModel, ScoringTable, build_table
from mldropd.batch.write import discard_staging, publish, staging_dir
from mldropd.db import make_engine, session_scope
from mldropd.engines import (
    Engines,
    EngineUnavailable,
    ModelTask,
    Outcome,
    ScoringRequest,
    timeout_of,
)
from mldropd.faults import fault_point
from mldropd.features import FeatureSource
from mldropd.records import BatchRun, DQResult, ModelRun
from mldropd.settings import Settings
from mldropd.states import DQStatus, ModelRunStatus, Phase, RunStatus
from mldropd.store import make_store
from mldropd.text import duration

if TYPE_CHECKING:
    from mldropd.batch.quality import QualityResult

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
        engines: Engines | None = None,
        report: bool = True,
        dates: tuple[int, int] = (0, 1),
    ) -> None:
        self.settings = settings
        self.batch_id = batch_id
        self.db = engine or make_engine(settings.database.path)
        self.retries = retries
        self.engines = engines or Engines(settings)
        self._own_engines = engines is None
        self.report = report  # False: the caller reports several batches at once (a backfill)
        self.work = Path(settings.server.work_dir) / f"batch-{batch_id}"
        self.source = FeatureSource(settings.features)
        self._last_beat = 0.0
        # dates: (dates of the job done before this one, dates of the job), for a backfill.
        self.progress = BatchProgress(self.db, batch_id, dates=dates)

    def execute(self) -> RunStatus:
        """Run every step; the batch ends succeeded or failed (or waits for its data)."""
        started = time.monotonic()
        self.work.mkdir(parents=True, exist_ok=True)
        # The DQ libraries (scikit-learn, SciPy) load meanwhile: the batch mostly waits on its
        # reader and the model hosts until then.
        threading.Thread(target=_warm_up, name="dq-import", daemon=True).start()
        try:
            claimed = ledger.claim(self.db, self.batch_id)
            self.progress.phase(Phase.STARTING)
            # The fork server imports its models' libraries while we fetch files and check keys.
            self.engines.prepare(
                [str(v.contract.get("pipeline_type", "")) for _, _, v in claimed.runs]
            )
            fault_point("claimed")
            extra = {"run_id": self.batch_id, "date": claimed.date.isoformat()}
            log.info("batch started with %d model(s)", len(claimed.runs), extra=extra)
            store = make_store(self.settings.storage)
            table = build_table(
                self.source, store, claimed.date, claimed.runs, self.work / "models"
            )
            if table.slice is None and self._wait_for_data(claimed.date):
                return RunStatus.PENDING
            for run_id, reason in self._rejected(table).items():
                ledger.fail_run(self.db, run_id, reason)
            if table.models and table.slice is not None:
                keys, stale = self._screen(table)
            if table.models and table.slice is not None:  # some may have failed the key check
                outcomes, current = self._score(table, keys.filters)
                self.progress.scored({i: o.rows for i, o in outcomes.items() if o.rows is not None})
                self.progress.checking(0, len(table.models))
                quality = self._quality(claimed.date, table, outcomes, keys.entities, current)
                for done, p in enumerate(table.models):
                    assert p.run.id is not None
                    self.progress.checking(done, len(table.models))
                    self._finish_model(
                        claimed.date,
                        p,
                        outcomes[p.run.id],
                        table.slice.date,
                        quality=quality.get(p.run.id),
                        key_check=keys.records.get(p.run.id),
                        stale=stale,
                    )
            fault_point("checked")
            if self.report:
                self.progress.phase(Phase.REPORT)
                report_batches(self.db, self.settings, [self.batch_id], retries=self.retries)
            status = ledger.close(self.db, self.batch_id)
        except ledger.NotRunnable:
            raise  # before any change: nothing to close
        except Exception as exc:
            log.exception("batch failed", extra={"run_id": self.batch_id})
            status = ledger.close(
                self.db,
                self.batch_id,
                f"internal error in the batch job: {type(exc).__name__}: "
                f"{exc}\n{traceback.format_exc(limit=-3)}",
            )
        finally:
            discard_staging(self.settings.scores.path, self.batch_id)
            shutil.rmtree(self.work, ignore_errors=True)
            self.progress.close()
            if self._own_engines:
                self.engines.close()
        log.info(
            "batch %s in %.1f s",
            status,
            time.monotonic() - started,
            extra={"run_id": self.batch_id},
        )
        return status

    def heartbeat(self) -> None:
        if time.monotonic() - self._last_beat >= 5:
            self._last_beat = time.monotonic()
            ledger.beat(self.db, self.batch_id)

    # -- steps ---------------------------------------------------------------------------------
    def _rejected(self, table: ScoringTable) -> dict[int, str]:
        if table.slice is not None:
            return table.rejected
        waited = duration(self.settings.scheduler.sensor_deadline)
        return {
            run_id: f"gave up waiting for the feature slice after {waited}: {reason}"
            for run_id, reason in table.rejected.items()
        }

    def _wait_for_data(self, day: dt.date) -> bool:
        """Sensor: the slice is late. Put the batch back to wait, unless its deadline passed."""
        cfg = self.settings.scheduler
        now = dt.datetime.now(dt.UTC)
        with session_scope(self.db) as s:
            batch = s.get(BatchRun, self.batch_id)
            assert batch is not None
            deadline = batch.created_at + dt.timedelta(seconds=cfg.sensor_deadline)
        if now >= deadline:
            return False
        retry = min(now + dt.timedelta(seconds=cfg.sensor_interval), deadline)
        missing = self.source.describe_missing(day)
        ledger.wait_for_data(
            self.db,
            self.batch_id,
            retry,
            f"waiting for data: {missing}; next check at {retry:%Y-%m-%d %H:%M} UTC, "
            f"gives up at {deadline:%Y-%m-%d %H:%M} UTC",
        )
        self.progress.phase(Phase.WAITING_FOR_DATA)
        log.info(
            "feature slice missing; batch waits until %s",
            retry.isoformat(),
            extra={"run_id": self.batch_id, "date": day.isoformat()},
        )
        return True

    def _screen(self, table: ScoringTable) -> tuple[KeyScreen, str | None]:
        """Before any model code runs: check the slice's entity keys (models keyed on a column
        the policies refuse fail here) and whether the slice is stale."""
        assert table.slice is not None
        cfg = self.settings.features
        stale = stale_note(table.slice, cfg.max_staleness_days)
        keys = screen_keys(
            self.source,
            table.slice.date,
            [(p.run.id, p.entity_key) for p in table.models if p.run.id is not None],
            cfg.duplicate_keys,
            cfg.null_keys,
        )
        for run_id, reason in keys.rejected.items():
            ledger.fail_run(
                self.db, run_id, reason, key_check=keys.records[run_id], stale_slice=stale
            )
        table.models = [p for p in table.models if p.run.id not in keys.rejected]
        self.progress.totals(keys.entities)
        return keys, stale

    def _score(
        self, table: ScoringTable, key_filters: list[dict[str, Any]]
    ) -> tuple[dict[int, Outcome], dict[str, Any] | None]:
        """One pass over the slice for every model, with the engine the batch calls for; and
        the DQ sample of the slice, drawn during that read (None when the engine had none)."""
        from mldropd.batch.quality import current_samples, model_scores  # warmed up meanwhile

        assert table.slice is not None
        cfg = self.settings.engine
        tasks = [self._task(p) for p in table.models]
        params = [p.version.contract.get("params") or {} for p in table.models]
        request = ScoringRequest(
            features=self.settings.features,
            slice_date=table.slice.date,
            batch_rows=min([int(q.get("batch_size") or cfg.batch_rows) for q in params]),
            scored_at=dt.datetime.now(dt.UTC),
            tasks=tuple(tasks),
            key_filters=tuple(key_filters),
        )
        requested = {
            p.model.name: q.get("engine") for p, q in zip(table.models, params, strict=True)
        }
        name, why = self.engines.choose(
            tasks, requested, lambda: self.source.count(request.slice_date)
        )
        log.info("scoring with the %s engine (%s)", name, why, extra={"run_id": self.batch_id})
        samples = current_samples(
            [model_scores(p, p.path, None) for p in table.models], self.settings.dq.av_max_rows
        )
        seen = {"batches": 0}

        def observe(batch: Any) -> None:
            seen["batches"] += 1
            for sample in samples.values():
                sample.add(batch)

        missing = Outcome(error="no result from scoring")
        try:
            engine = self.engines.spark() if name == "spark" else self.engines.local()
            outcomes = engine.score(
                request, heartbeat=self.heartbeat, progress=self.progress, observe=observe
            )
        except Exception as exc:  # no session, no sandbox: every model says why
            log.exception("the %s engine failed", name, extra={"run_id": self.batch_id})
            return {
                t.model_run_id: Outcome(error=_engine_error(name, why, exc)) for t in tasks
            }, None
        got = {t.model_run_id: outcomes.get(t.model_run_id) or missing for t in tasks}
        # The sample is the slice's only if the engine read all of it (an engine that does not
        # observe leaves DQ to read the slice itself).
        current = {k: s.table() for k, s in samples.items()} if seen["batches"] else None
        return got, current

    def _quality(
        self,
        day: dt.date,
        table: ScoringTable,
        outcomes: dict[int, Outcome],
        entities: dict[int, int],
        current: dict[str, Any] | None,
    ) -> dict[int, Any]:
        """DQ of the whole batch at once: each feature slice is read at most once (the current
        one not at all when its sample was drawn during scoring, a reference one not at all when
        its sample was kept when it was scored)."""
        from mldropd.batch.quality import check_batch, model_scores
        from mldropd.dq.sample import SampleStore

        assert table.slice is not None
        cfg = self.settings.dq
        scored = [p for p in table.models if p.run.id is not None and outcomes[p.run.id].ok]
        return check_batch(
            self.source,
            self.settings.scores.path,
            day=day,
            slice_date=table.slice.date,
            models=[
                model_scores(
                    p,
                    staging_dir(self.settings.scores.path, self.batch_id, p.run.id or 0),
                    entities.get(p.run.id or 0, outcomes[p.run.id or 0].rows),
                )
                for p in scored
            ],
            settings=cfg,
            current=current,
            store=SampleStore(cfg.samples_path, cfg.samples_days) if cfg.samples_days else None,
        ).results

    def _task(self, p: PreparedModel) -> ModelTask:
        assert p.run.id is not None and p.model.id is not None
        contract = p.version.contract
        return ModelTask(
            model_run_id=p.run.id,
            model_id=p.model.id,
            model_version=p.version.version,
            owner_id=p.model.owner_id,
            path=p.path,
            features=tuple(p.features),
            input=contract["input"],
            call=contract["call"],
            output=contract["output"],
            entity_key=p.entity_key,
            out_dir=staging_dir(self.settings.scores.path, self.batch_id, p.run.id),
            timeout_s=timeout_of(contract.get("params") or {}, self.settings.engine),
            pipeline_type=str(contract.get("pipeline_type") or ""),
        )

    def _finish_model(
        self,
        day: dt.date,
        p: PreparedModel,
        outcome: Outcome,
        slice_date: dt.date,
        *,
        quality: QualityResult | Exception | None = None,
        key_check: dict[str, Any] | None = None,
        stale: str | None = None,
    ) -> None:
        """DQ result -> publish (or hold at the gate) -> record, for one scored model."""
        assert p.run.id is not None and p.model.id is not None
        extra = {
            "run_id": self.batch_id,
            "model_run_id": p.run.id,
            "model_id": p.model.id,
            "date": day.isoformat(),
        }
        if not outcome.ok:
            ledger.fail_run(
                self.db,
                p.run.id,
                outcome.error or "failed",
                key_check=key_check,
                stale_slice=stale,
            )
            log.warning("model run failed: %s", outcome.error, extra=extra)
            return
        staged = staging_dir(self.settings.scores.path, self.batch_id, p.run.id)
        fault_point("scored")
        overrides = {**(p.version.contract.get("dq") or {}), **(p.model.dq or {})}
        result = None if quality is None or isinstance(quality, Exception) else quality
        dq_error = f"{type(quality).__name__}: {quality}"  # the error, when there is no result
        gate = overrides.get("gate") or self.settings.dq.gate
        status = reason = None
        if result is not None:  # a stale slice weighs in before the gate looks
            status, reason = weigh(
                result.report.status, result.report.reason, stale, self.settings.dq.stale_slice
            )
        held = gate == "alert" and status == "alert"
        target = self.settings.dq.quarantine_path if held else self.settings.scores.path
        publish(staged, target, day, p.model.id)
        fault_point("published")
        if result is not None:
            r = result.report
            dq = DQResult(
                model_run_id=p.run.id,
                model_id=p.model.id,
                date=day,
                reference_date=result.reference_date,
                psi=r.psi,
                psi_noise=r.psi_noise,
                auc=r.auc,
                ks=r.ks,
                status=DQStatus(status or r.status),
                reason=reason or r.reason,
                details=r.details,
            )
        else:
            dq = DQResult(
                model_run_id=p.run.id,
                model_id=p.model.id,
                date=day,
                status=DQStatus.WARN,
                reason=f"DQ could not be computed: {dq_error}",
            )
        with Session(self.db) as s:
            warning = _slow_warning(
                s, p.model.id, outcome.seconds, self.settings.scheduler.duration_warning
            )
        notes = [w for w in [warning, *outcome.warnings] if w]
        ledger.succeed_run(
            self.db,
            p.run.id,
            dq,
            rows=outcome.rows,
            seconds=outcome.seconds,
            slice_date=slice_date,
            warning="; ".join(notes) or None,
            quarantined=held,
            key_check=key_check,
            stale_slice=stale,
        )
        log.info(
            "model run succeeded rows=%s seconds=%.2f",
            outcome.rows,
            outcome.seconds or 0,
            extra=extra,
        )


def _warm_up() -> None:
    with contextlib.suppress(Exception):  # the real import, later, says what is wrong
        importlib.import_module("mldropd.batch.quality")


def _slow_warning(s: Session, model_id: int, seconds: float | None, factor: float) -> str | None:
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
    median = float(statistics.median(x for x in past if x is not None))
    # Sub-second jitter is no news: a few seconds more than usual at the least.
    if median > 0 and seconds > factor * median and seconds - median >= SLOW_MIN_EXTRA_S:
        return (
            f"slow: {duration(seconds)} is more than {factor:g} times the median "
            f"{duration(median)} of the model's last {len(past)} runs"
        )
    return None


def _engine_error(name: str, why: str, exc: Exception) -> str:
    if isinstance(exc, EngineUnavailable):
        return f"the {name} engine was requested ({why}) but {exc}"
    return f"the {name} engine failed: {type(exc).__name__}: {exc}"
