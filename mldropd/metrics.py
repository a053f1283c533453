"""Prometheus text for /metrics, computed from the database at scrape time."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlmodel import Session, func, select

from mldropd.records import DQResult, Model, ModelRun, OutboxMessage

if TYPE_CHECKING:
    from mldropd.daemon import Daemon


class _StateCollector:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def collect(self):  # type: ignore[no-untyped-def]
        with Session(self.daemon.engine) as s:
            runs = GaugeMetricFamily(
                "mldropd_model_runs", "Model runs by status", labels=["status"]
            )
            for status, count in s.exec(
                select(ModelRun.status, func.count()).group_by(ModelRun.status)
            ):
                runs.add_metric([status], count)
            yield runs
            rows = GaugeMetricFamily("mldropd_rows_scored", "Rows scored by succeeded runs")
            rows.add_metric([], s.exec(select(func.coalesce(func.sum(ModelRun.rows), 0))).one())
            yield rows
            models = GaugeMetricFamily("mldropd_models", "Models by status", labels=["status"])
            for status, count in s.exec(select(Model.status, func.count()).group_by(Model.status)):
                models.add_metric([status], count)
            yield models
            dq = GaugeMetricFamily("mldropd_dq_results", "DQ results by status", labels=["status"])
            for status, count in s.exec(
                select(DQResult.status, func.count()).group_by(DQResult.status)
            ):
                dq.add_metric([status], count)
            yield dq
            outbox = GaugeMetricFamily(
                "mldropd_outbox_messages", "Report emails by status", labels=["status"]
            )
            for status, count in s.exec(
                select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status)
            ):
                outbox.add_metric([status], count)
            yield outbox


def render(daemon: Daemon) -> str:
    """The current metrics in Prometheus text format."""
    registry = CollectorRegistry()
    registry.register(_StateCollector(daemon))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
