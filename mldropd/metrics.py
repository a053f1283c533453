"""Prometheus text for /metrics, computed from the database and the scheduler at scrape time.

Everything is read when Prometheus scrapes, so the numbers are the same whichever process (the
daemon or a batch job) wrote them, and survive restarts. Durations are histograms built from
the stored run times (ModelRun.seconds, BatchRun start/finish).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func
from sqlmodel import Session, col, select

from mldropd import __version__
from mldropd.records import (
    BatchRun,
    DQResult,
    Model,
    ModelRun,
    ModelVersion,
    OutboxMessage,
    SweepLog,
)
from mldropd.scheduling.scheduler import SWEEP_JOB, sweep_fire_time
from mldropd.states import OutboxStatus, SweepStatus

if TYPE_CHECKING:
    from mldropd.daemon import Daemon

# Seconds: a small model takes a second, a large one tens of minutes.
BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


def _counts(s: Session, name: str, doc: str, status: Any) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["status"])
    for value, count in s.exec(select(status, func.count()).group_by(status)):
        family.add_metric([str(value)], count)
    return family


def _histogram(s: Session, name: str, doc: str, seconds: Any, status: Any) -> Metric:
    """A histogram over a SQL expression, per status, counted by the database."""
    family = HistogramMetricFamily(name, doc, labels=["status"])
    columns = [func.count(), func.coalesce(func.sum(seconds), 0.0)]
    columns += [func.sum(case((seconds <= bound, 1), else_=0)) for bound in BUCKETS]
    query = select(status, *columns).where(seconds.is_not(None)).group_by(status)
    for value, count, total, *cumulative in s.exec(query):
        buckets = [(str(b), int(c or 0)) for b, c in zip(BUCKETS, cumulative, strict=True)]
        family.add_metric([str(value)], [*buckets, ("+Inf", count)], float(total))
    return family


def _gauge(name: str, doc: str, value: float | None) -> Iterator[GaugeMetricFamily]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=value)


def _epoch(moment: dt.datetime | None) -> float | None:
    if moment is None:
        return None
    return moment.timestamp()


class StateCollector:
    """mldropd_* metrics: runs, durations, rows, DQ, uploads, outbox, scheduler."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("mldropd_build_info", "mldropd version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        with Session(self.daemon.engine) as s:
            yield from self._runs(s)
            yield from self._uploads_and_outbox(s)
            yield from self._sweep(s)
        yield from self._scheduler()
        yield from self._sandbox()

    def _sandbox(self) -> Iterator[Metric]:
        """1 for each sandbox layer in force, 0 for each missing one (once probed)."""
        layers = self.daemon.sandbox_layers()
        if not layers:
            return
        family = GaugeMetricFamily(
            "mldropd_sandbox_layer", "Sandbox layers: 1 in force, 0 missing", labels=["layer"]
        )
        for layer in layers["in_force"]:
            family.add_metric([layer], 1)
        for layer in layers["missing"]:
            family.add_metric([layer], 0)
        yield family

    def _runs(self, s: Session) -> Iterator[Metric]:
        yield _counts(s, "mldropd_model_runs", "Model runs by status", ModelRun.status)
        yield _counts(s, "mldropd_batch_runs", "Batch runs by status", BatchRun.status)
        yield _counts(s, "mldropd_models", "Models by status", Model.status)
        yield _counts(s, "mldropd_dq_results", "DQ results by status", DQResult.status)
        yield _histogram(
            s,
            "mldropd_model_run_seconds",
            "Time to score one model on one date (model runs with a duration)",
            col(ModelRun.seconds),
            ModelRun.status,
        )
        batch_seconds = (
            func.julianday(BatchRun.finished_at) - func.julianday(BatchRun.started_at)
        ) * 86400.0
        yield _histogram(
            s,
            "mldropd_batch_run_seconds",
            "Wall time of finished batch runs (one date, all its models)",
            batch_seconds,
            BatchRun.status,
        )
        rows = s.exec(select(func.coalesce(func.sum(ModelRun.rows), 0))).one()
        yield GaugeMetricFamily("mldropd_rows_scored", "Rows scored by model runs", value=rows)

    def _uploads_and_outbox(self, s: Session) -> Iterator[Metric]:
        count, size = s.exec(
            select(func.count(), func.coalesce(func.sum(ModelVersion.size), 0))
        ).one()
        yield GaugeMetricFamily("mldropd_uploads", "Model versions stored (uploads)", value=count)
        yield GaugeMetricFamily(
            "mldropd_upload_bytes", "Bytes of the model versions stored", value=size
        )
        yield _counts(s, "mldropd_outbox_messages", "Report emails by status", OutboxMessage.status)
        pending, oldest = s.exec(
            select(func.count(), func.min(OutboxMessage.created_at)).where(
                OutboxMessage.status == OutboxStatus.PENDING
            )
        ).one()
        yield GaugeMetricFamily(
            "mldropd_outbox_backlog", "Report emails waiting to be delivered", value=pending
        )
        if oldest is not None:
            age = dt.datetime.now(dt.UTC).timestamp() - (_epoch(oldest) or 0.0)
            yield GaugeMetricFamily(
                "mldropd_outbox_oldest_pending_seconds",
                "Age of the oldest undelivered report email",
                value=max(age, 0.0),
            )

    def _sweep(self, s: Session) -> Iterator[Metric]:
        last = s.exec(
            select(SweepLog)
            .where(SweepLog.status == SweepStatus.PLANNED)
            .order_by(col(SweepLog.date).desc())
        ).first()
        if last is None:
            return
        settings = self.daemon.settings
        yield from _gauge(
            "mldropd_sweep_last_timestamp_seconds",
            "When the last sweep planned its date (Unix time)",
            _epoch(last.created_at),
        )
        midnight = dt.datetime.combine(last.date, dt.time(), tzinfo=self.daemon.tz)
        due = sweep_fire_time(settings, midnight)
        if due is not None and due.date() == last.date:
            lag = (_epoch(last.created_at) or 0.0) - due.timestamp()
            yield GaugeMetricFamily(
                "mldropd_sweep_last_lag_seconds",
                "How late the last sweep ran after its scheduled time (catch-up makes it large)",
                value=max(lag, 0.0),
            )

    def _scheduler(self) -> Iterator[Metric]:
        scheduler = self.daemon.scheduler
        running = scheduler is not None and scheduler.running
        yield GaugeMetricFamily(
            "mldropd_scheduler_running", "1 when the scheduler runs", value=float(running)
        )
        if scheduler is None or not running:
            return
        jobs = scheduler.get_jobs()
        sweep = next((j for j in jobs if j.id == SWEEP_JOB), None)
        yield from _gauge(
            "mldropd_sweep_next_timestamp_seconds",
            "When the next sweep fires (Unix time)",
            _epoch(sweep.next_run_time) if sweep is not None else None,
        )
        yield GaugeMetricFamily(
            "mldropd_retries_pending",
            "Retry jobs waiting to re-run failed models",
            value=sum(j.id.startswith("retry-") for j in jobs),
        )
        yield GaugeMetricFamily(
            "mldropd_resumes_pending",
            "Batches waiting for a late feature slice (sensor jobs)",
            value=sum(j.id.startswith("resume-") for j in jobs),
        )


def registry_for(daemon: Daemon) -> CollectorRegistry:
    """A registry with mldropd's metrics plus the process and Python platform collectors."""
    registry = CollectorRegistry()
    registry.register(StateCollector(daemon))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(daemon: Daemon) -> str:
    """The current metrics in Prometheus text format."""
    return generate_latest(registry_for(daemon)).decode()
