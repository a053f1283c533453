"""What the pages show, read from the registry in one place: models table rows, a model's
detail (runs, DQ charts, last report), dashboard rows. The JSON shapes come from api/views.py,
so a page and its API twin agree."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlmodel import Session, col, select

from mldropd.api.views import dq_json, model_json, run_json
from mldropd.pages import charts
from mldropd.records import DQResult, Model, ModelRun, OutboxMessage, User
from mldropd.registry import get_model, list_models, versions
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, ModelStatus

BUSY = (ModelRunStatus.PENDING, ModelRunStatus.RUNNING)
SEVERITY = {"alert": 0, "warn": 1, "ok": 2}
SPARK_POINTS = 30


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


def busy_model_ids(s: Session, model_ids: list[int]) -> set[int]:
    """Models with a run waiting or in progress: their pages poll until it finishes."""
    if not model_ids:
        return set()
    rows = s.exec(
        select(ModelRun.model_id).where(
            col(ModelRun.model_id).in_(model_ids), col(ModelRun.status).in_(BUSY)
        )
    )
    return set(rows)


def health(model: dict[str, Any]) -> str:
    """The status badge: paused, failing (last run failed) or active."""
    if model["status"] != ModelStatus.ACTIVE:
        return str(model["status"])
    last = model.get("last_run")
    return "failing" if last and last["status"] == ModelRunStatus.FAILED else "active"


def model_rows(
    s: Session, user: User, settings: Settings, now: dt.datetime
) -> list[dict[str, Any]]:
    """The user's models (admin: all) for the models table."""
    models = list_models(s, user)
    busy = busy_model_ids(s, [m.id for m in models if m.id is not None])
    rows = []
    for model in models:
        row = model_json(s, model, settings, now)
        row.update(
            health=health(row),
            busy=model.id in busy,
            versions=[v.version for v in versions(s, model.id or 0)],
        )
        rows.append(row)
    return rows


def _thresholds(dq: list[dict[str, Any]], settings: Settings) -> dict[str, float]:
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


def dq_charts(dq: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
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


def last_report(s: Session, model: Model) -> dict[str, Any] | None:
    """The newest report email sent to the model's address that is about this model."""
    word = re.compile(rf"(?<![\w-]){re.escape(model.name)}(?![\w-])")
    rows = s.exec(
        select(OutboxMessage)
        .where(OutboxMessage.to == model.email)
        .order_by(col(OutboxMessage.id).desc())
        .limit(50)
    )
    for row in rows:
        if word.search(row.subject) or word.search(row.body_text):
            return {
                "subject": row.subject,
                "to": row.to,
                "status": row.status,
                "created": when(row.created_at.isoformat()),
                "sent": when(row.sent_at.isoformat()) if row.sent_at else None,
                "error": row.last_error,
                "body": row.body_text,
            }
    return None


def detail_context(
    s: Session, user: User, model_id: int, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """Everything the model page shows; another user's model is not found."""
    model = get_model(s, user, model_id)
    data = model_json(s, model, settings, now, detail=True)
    data["health"] = health(data)
    for v in data["versions"]:
        v["uploaded"] = when(v["uploaded_at"])
    runs = [
        run_json(r)
        for r in s.exec(
            select(ModelRun)
            .where(ModelRun.model_id == model_id)
            .order_by(col(ModelRun.id).desc())
            .limit(50)
        )
    ]
    for r in runs:
        r["finished"] = when(r["finished_at"]) if r["finished_at"] else None
    dq = [
        dq_json(r)
        for r in s.exec(
            select(DQResult)
            .where(DQResult.model_id == model_id)
            .order_by(col(DQResult.date), col(DQResult.id))
        )
    ]
    dq = list({d["date"]: d for d in dq}.values())[-90:]  # a re-scored date shows its last result
    current = next((v for v in data["versions"] if v["version"] == data["version"]), None)
    return {
        "model": data,
        "runs": runs,
        "dq": list(reversed(dq)),
        "charts": dq_charts(dq, settings),
        "dry_run_chart": dry_run_chart(current["dry_run"] if current else None),
        "report": last_report(s, model),
        "busy": bool(busy_model_ids(s, [model_id])),
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


def dashboard_rows(
    s: Session, user: User, settings: Settings, now: dt.datetime, *, sort: str = "status"
) -> list[dict[str, Any]]:
    """Every model the user may see with its DQ status and PSI history, sorted."""
    models = list_models(s, user)
    history: dict[int, list[DQResult]] = {}
    ids = [m.id for m in models if m.id is not None]
    if ids:
        for row in s.exec(
            select(DQResult)
            .where(col(DQResult.model_id).in_(ids))
            .order_by(col(DQResult.date), col(DQResult.id))
        ):
            history.setdefault(row.model_id, []).append(row)
    rows = []
    for model in models:
        row = model_json(s, model, settings, now)
        by_date = {d.date: d for d in history.get(model.id or 0, [])}
        points = list(by_date.values())[-SPARK_POINTS:]
        warn = (
            (points[-1].details or {}).get("thresholds", {}).get("psi_warn")
            if points
            else settings.dq.psi_warn
        )
        row["health"] = health(row)
        row["spark"] = charts.sparkline_svg(
            [d.psi for d in points], row["last_dq"]["status"] if row["last_dq"] else "", warn
        )
        rows.append(row)
    return sorted(rows, key=_sort_key(sort))


def alerts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only the rows whose latest DQ result is an alert."""
    return [r for r in rows if r["last_dq"] and r["last_dq"]["status"] == "alert"]


def dashboard_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = {"alert": 0, "warn": 0, "ok": 0, "none": 0}
    for r in rows:
        counts[r["last_dq"]["status"] if r["last_dq"] else "none"] += 1
    return counts
