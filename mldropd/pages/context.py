"""What the pages show, from the services in one place: models table rows, a model's detail
(runs, DQ charts, last report), dashboard rows. The rows are the API's JSON shapes
(mldropd.services.schemas) with what a page adds (health, charts, times in words), so a page and
its API twin agree."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from mldropd.pages import charts
from mldropd.records import OutboxMessage, User
from mldropd.services import ModelService
from mldropd.services.schemas import DQOut
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, ModelStatus

SEVERITY = {"alert": 0, "warn": 1, "ok": 2}
SPARK_POINTS = 30
PAGE_SIZE = 100  # rows of the models table and the dashboard per page
DQ_POINTS = 90  # dates on a model page's trend charts


def when(value: str | None) -> str:
    """An ISO timestamp as 'YYYY-MM-DD HH:MM UTC' (dates pass through)."""
    if not value:
        return "—"
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return value
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def health(model: Mapping[str, Any]) -> str:
    """The status badge: paused, failing (last run failed) or active."""
    if model["status"] != ModelStatus.ACTIVE:
        return str(model["status"])
    last = model.get("last_run")
    return "failing" if last and last["status"] == ModelRunStatus.FAILED else "active"


@dataclass(frozen=True)
class Pager:
    """One page of a long list: which rows it shows and the links to its neighbours."""

    path: str
    page: int
    total: int
    size: int = PAGE_SIZE
    params: dict[str, str] = field(default_factory=dict)  # kept in the links (sort, filter)

    @classmethod
    def of(cls, path: str, page: int | None, total: int, **params: str | None) -> Pager:
        """The asked-for page, moved into range (a page past the end shows the last one)."""
        first = cls(path, 1, total, params={k: v for k, v in params.items() if v})
        return replace(first, page=min(max(page or 1, 1), first.pages))

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def first(self) -> int:
        return min(self.offset + 1, self.total)

    @property
    def last(self) -> int:
        return min(self.offset + self.size, self.total)

    def url(self, page: int | None = None) -> str:
        """This list's address on another page (default: this one)."""
        query = {**self.params, **({"page": str(page or self.page)} if self.pages > 1 else {})}
        return f"{self.path}?{urlencode(query)}" if query else self.path


def page_number(value: str | None) -> int:
    """?page=N from a link or a hand-edited address; anything else is the first page."""
    return int(value) if value and value.isdigit() and len(value) < 10 else 1


def model_rows(
    models: ModelService, user: User, page: int | None = None
) -> tuple[list[dict[str, Any]], Pager]:
    """One page of the user's models (admin: all) for the models table, by name."""
    pager = Pager.of("/models", page, models.count(user))
    table = models.table(user, limit=pager.size, offset=pager.offset)
    rows = [
        {
            **row,
            "health": health(row),
            "busy": row["id"] in table.busy,
            "versions": table.versions.get(row["id"], []),
        }
        for row in table.rows
    ]
    return rows, pager


def _thresholds(dq: list[DQOut], settings: Settings) -> dict[str, float]:
    for row in reversed(dq):
        found = (row.get("details") or {}).get("thresholds")
        if found:
            return {k: float(v) for k, v in found.items()}
    d = settings.dq
    return {
        "psi_warn": d.psi_warn,
        "psi_alert": d.psi_alert,
        "auc_warn": d.auc_warn,
        "auc_alert": d.auc_alert,
    }


def dq_charts(dq: list[DQOut], settings: Settings) -> dict[str, Any]:
    """PSI and AUC trends with thresholds, and the latest current-vs-reference histogram."""
    thr = _thresholds(dq, settings)
    dates = [dt.date.fromisoformat(d["date"]) for d in dq]
    psi = charts.trend_svg(
        [
            charts.Series("PSI", list(zip(dates, [d["psi"] for d in dq], strict=True))),
            charts.Series(
                "sampling noise",
                list(zip(dates, [d["psi_noise"] for d in dq], strict=True)),
                "noise",
            ),
        ],
        [
            charts.Threshold("warn", thr["psi_warn"]),
            charts.Threshold("alert", thr["psi_alert"], "thr-alert"),
        ],
        "PSI of scores vs the previous scored date",
        "PSI",
    )
    auc = charts.trend_svg(
        [charts.Series("AUC", list(zip(dates, [d["auc"] for d in dq], strict=True)))],
        [
            charts.Threshold("warn", thr["auc_warn"]),
            charts.Threshold("alert", thr["auc_alert"], "thr-alert"),
        ],
        "Adversarial validation AUC (0.5 = indistinguishable)",
        "ROC AUC",
        y_min=0.4,
        y_floor_max=1.0,
    )
    hist, hist_row = None, None
    for row in reversed(dq):
        h = (row.get("details") or {}).get("histogram")
        if h and h.get("reference") is not None:
            hist_row = row
            hist = charts.compare_histogram_svg(
                h["current"],
                h["reference"],
                h["edges"],
                f"Scores on {row['date']} vs {row['reference_date']}",
                current_label=row["date"],
                reference_label=str(row["reference_date"]),
            )
            outside = int(h.get("reference_below", 0)) + int(h.get("reference_above", 0))
            hist_row = {**row, "reference_outside": outside}
            break
    return {"psi": psi, "auc": auc, "histogram": hist, "histogram_row": hist_row, "thresholds": thr}


def dry_run_chart(dry_run: dict[str, Any] | None, title: str = "Dry-run scores") -> Any:
    hist = (dry_run or {}).get("histogram")
    if not hist:
        return None
    return charts.histogram_svg(hist["counts"], hist["edges"], title)


def report_view(row: OutboxMessage | None) -> dict[str, Any] | None:
    """A report e-mail as the model page shows it."""
    if row is None:
        return None
    return {
        "subject": row.subject,
        "to": row.to,
        "status": row.status,
        "created": when(row.created_at.isoformat()),
        "sent": when(row.sent_at.isoformat()) if row.sent_at else None,
        "error": row.last_error,
        "body": row.body_text,
    }


def detail_context(
    models: ModelService, user: User, model_id: int, settings: Settings
) -> dict[str, Any]:
    """Everything the model page shows; another user's model is not found."""
    page = models.page(user, model_id, runs=50, dq_dates=DQ_POINTS)
    versions: list[dict[str, Any]] = [
        {**v, "uploaded": when(v["uploaded_at"])} for v in page.model["versions"]
    ]
    data: dict[str, Any] = {**page.model, "health": health(page.model), "versions": versions}
    runs = [
        {**r, "finished": when(r["finished_at"]) if r["finished_at"] else None} for r in page.runs
    ]
    current = next((v for v in versions if v["version"] == data["version"]), None)
    return {
        "model": data,
        "runs": runs,
        "dq": list(reversed(page.dq)),
        "charts": dq_charts(page.dq, settings),
        "dry_run_chart": dry_run_chart(current["dry_run"] if current else None),
        "report": report_view(page.report),
        "busy": page.busy,
    }


def _sort_key(sort: str) -> Any:
    def status_key(r: dict[str, Any]) -> tuple[int, str]:
        dq = r["last_dq"]
        return (SEVERITY.get(dq["status"], 3) if dq else 3, r["name"])

    def psi_key(r: dict[str, Any]) -> tuple[float, str]:
        dq = r["last_dq"]
        value = dq["psi"] if dq and dq["psi"] is not None else -1.0
        return (-value, r["name"])

    return {"status": status_key, "psi": psi_key}.get(sort, lambda r: (r["name"], r["owner"]))


@dataclass
class Dashboard:
    """The dashboard's page of rows, its pager, and the DQ status counts of every model."""

    rows: list[dict[str, Any]]
    pager: Pager
    counts: dict[str, int]


def dashboard(
    models: ModelService,
    user: User,
    settings: Settings,
    *,
    sort: str = "status",
    only_alerts: bool = False,
    page: int | None = None,
) -> Dashboard:
    """One page of the models the user may see (only the alerts, if asked), sorted, with
    their DQ status; the PSI history is read and drawn for the rows shown only."""
    rows: list[dict[str, Any]] = sorted(map(dict, models.list(user)), key=_sort_key(sort))
    counts = dashboard_counts(rows)
    if only_alerts:
        rows = [r for r in rows if r["last_dq"] and r["last_dq"]["status"] == "alert"]
    pager = Pager.of(
        "/dashboard", page, len(rows), sort=sort, only="alerts" if only_alerts else None
    )
    shown = rows[pager.offset : pager.offset + pager.size]
    history = models.psi_histories([r["id"] for r in shown], SPARK_POINTS)
    for row in shown:
        points, warn = history.get(row["id"], ([], None))
        row["health"] = health(row)
        row["spark"] = charts.sparkline_svg(
            points,
            row["last_dq"]["status"] if row["last_dq"] else "",
            settings.dq.psi_warn if warn is None else warn,
        )
    return Dashboard(shown, pager, counts)


def dashboard_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"alert": 0, "warn": 0, "ok": 0, "none": 0}
    for r in rows:
        counts[r["last_dq"]["status"] if r["last_dq"] else "none"] += 1
    return counts
