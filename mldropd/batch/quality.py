"""DQ step: compare a model's new partition with its previous one (see mldropd.dq)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from mldropd.batch.write import previous_partition
from mldropd.dq.evaluate import DQReport, Thresholds, evaluate
from mldropd.dq.psi import psi
from mldropd.features import FeatureSource
from mldropd.settings import DQSettings


@dataclass
class QualityResult:
    report: DQReport
    reference_date: dt.date | None


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _scores(con: duckdb.DuckDBPyConnection, part: Path) -> np.ndarray:
    glob = _sql_str(str(part / "*.parquet"))
    return con.sql(f"SELECT score FROM read_parquet({glob})").fetchnumpy()["score"]


def _sample(
    con: duckdb.DuckDBPyConnection,
    source: FeatureSource,
    slice_date: dt.date | None,
    part: Path,
    features: list[str],
    key: str,
    max_rows: int,
) -> pd.DataFrame:
    """Up to max_rows rows of (features, score), chosen by a hash of the key (deterministic)."""
    glob = _sql_str(str(part / "*.parquet"))
    q = source.quote
    if slice_date is None or not features:
        return con.sql(
            f"SELECT score FROM read_parquet({glob}) ORDER BY hash({q(key)}) LIMIT {int(max_rows)}"
        ).df()
    feats = source.select_sql(slice_date, [key, *features])
    cols = ", ".join(f"f.{q(c)}" for c in features)
    return con.sql(
        f"SELECT {cols}, s.score FROM read_parquet({glob}) s JOIN ({feats}) f "
        f"ON s.{q(key)} = f.{q(key)} ORDER BY hash(s.{q(key)}) LIMIT {int(max_rows)}"
    ).df()


def feature_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    features: list[str],
    importance: dict[str, float],
    top: int,
) -> list[dict[str, Any]]:
    """PSI (same definition as for scores) of the model's most important features, on the DQ
    samples; the noise level says how much of it sampling alone explains."""
    if reference is None:
        return []
    ranked = sorted(features, key=lambda f: -importance.get(f, 0.0)) if importance else features
    rows = []
    for name in [f for f in ranked if f in current and f in reference][:top]:
        cur = pd.to_numeric(current[name], errors="coerce").to_numpy(dtype=float)
        ref = pd.to_numeric(reference[name], errors="coerce").to_numpy(dtype=float)
        result = psi(ref, cur)
        rows.append(
            {
                "feature": name,
                "psi": result.psi,
                "noise": result.noise,
                "within_noise": result.within_noise,
                "importance": importance.get(name),
            }
        )
    return sorted(rows, key=lambda r: -(r["psi"] or 0.0))


def check_quality(
    source: FeatureSource,
    scores_root: str | Path,
    *,
    current_part: Path,
    day: dt.date,
    model_id: int,
    slice_date: dt.date,
    features: list[str],
    entity_key: str,
    is_probability: bool,
    slice_rows: int | None,
    settings: DQSettings,
    overrides: dict[str, Any] | None,
    importance: dict[str, float] | None = None,
) -> QualityResult:
    """DQ of the new scores of (day, model) in current_part against the previous partition."""
    thresholds = Thresholds.merged(
        Thresholds(settings.psi_warn, settings.psi_alert, settings.auc_warn, settings.auc_alert),
        {k: v for k, v in (overrides or {}).items() if k != "gate"},
    )
    previous = previous_partition(scores_root, day, model_id)
    with source.connect() as con:
        current_scores = _scores(con, current_part)
        current = _sample(
            con, source, slice_date, current_part, features, entity_key, settings.av_max_rows
        )
        reference = reference_scores = None
        ref_date = None
        if previous is not None:
            ref_date, ref_part = previous
            ref_slice = source.slice_for(ref_date)
            usable = features if ref_slice is not None else []
            reference_scores = _scores(con, ref_part)
            reference = _sample(
                con,
                source,
                ref_slice.date if ref_slice else None,
                ref_part,
                usable,
                entity_key,
                settings.av_max_rows,
            )
            if not usable:
                current = current[["score"]]
    report = evaluate(
        current,
        reference,
        features=[c for c in current.columns if c != "score"],
        thresholds=thresholds,
        is_probability=is_probability,
        slice_rows=slice_rows,
        av_max_rows=settings.av_max_rows,
        current_scores=current_scores,
        reference_scores=reference_scores,
    )
    drift = feature_drift(current, reference, features, importance or {}, settings.feature_psi_top)
    moved = [
        d
        for d in drift
        if d["psi"] is not None and not d["within_noise"] and d["psi"] >= thresholds.psi_alert
    ]
    reason = report.reason
    if moved:
        listed = ", ".join(f"{d['feature']} (PSI {d['psi']:.2f})" for d in moved[:5])
        reason = f"{reason}; feature drift: {listed}"
    report = dataclasses.replace(
        report, reason=reason, details={**report.details, "feature_psi": drift}
    )
    return QualityResult(report, ref_date)
