"""One model run's data-quality report: PSI, adversarial AUC, KS and basic checks, with a status."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from mldropd.dq.adversarial import adversarial_auc
from mldropd.dq.checks import basic_checks, ks, ks_sorted
from mldropd.dq.psi import as_float_array, drop_nan, psi

SEVERITY = {"ok": 0, "warn": 1, "alert": 2}
HIST_BINS = 20
FIRST_DATE = "first scored date: no previous partition to compare with"
# A feature is named in the reason when its importance is at least this share of the largest
# one; the tail of a top-5 list on an undrifted run is sampling noise and would mislead.
MOVED_FEATURE_SHARE = 0.1


@dataclass(frozen=True)
class Thresholds:
    """Status thresholds: a metric at or above *_warn is warn, at or above *_alert is alert."""

    psi_warn: float = 0.1
    psi_alert: float = 0.25
    auc_warn: float = 0.6
    auc_alert: float = 0.75

    @classmethod
    def merged(cls, base: Thresholds, override: dict[str, Any] | None) -> Thresholds:
        """Return base with a model's `dq` overrides applied; unknown keys and None are ignored."""
        if not override:
            return base
        names = {f.name for f in fields(cls)}
        changes: dict[str, float] = {}
        for key, value in override.items():
            if key not in names or value is None:
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Real)
                or not math.isfinite(value)
            ):
                raise ValueError(f"dq.{key} must be a finite number, got {value!r}")
            changes[key] = float(value)
        result = replace(base, **changes)
        for metric in ("psi", "auc"):
            warn, alert = getattr(result, f"{metric}_warn"), getattr(result, f"{metric}_alert")
            if warn > alert:
                raise ValueError(
                    f"dq.{metric}_warn ({warn:g}) is above dq.{metric}_alert ({alert:g})"
                )
        return result


@dataclass(frozen=True)
class DQReport:
    """Status, reason in words, headline figures and JSON-serialisable details of one run."""

    status: str
    reason: str
    psi: float | None
    psi_noise: float | None
    auc: float | None
    ks: float | None
    details: dict[str, Any]


def _thr(threshold: float) -> str:
    """Format a threshold with 2 decimals unless that would change its value (e.g. 0.125)."""
    text = f"{threshold:.2f}"
    return text if float(text) == threshold else f"{threshold:g}"


def _fmt(value: float, threshold: float) -> str:
    """Format value with 2 decimals, more when 2 would print a different value as the threshold."""
    for decimals in range(2, 7):
        text = f"{value:.{decimals}f}"
        if value == threshold or float(text) != threshold:
            return text
    return repr(value)


def _grade(name: str, value: float, warn: float, alert: float) -> tuple[str, str]:
    """Return (status, words) for a metric against its warn/alert thresholds."""
    if value >= alert:
        return "alert", f"{name} {_fmt(value, alert)} ≥ alert {_thr(alert)}"
    if value >= warn:
        return "warn", f"{name} {_fmt(value, warn)} ≥ warn {_thr(warn)}"
    return "ok", f"{name} {_fmt(value, warn)} < warn {_thr(warn)}"


def _worst(statuses: list[str]) -> str:
    """Return the most severe status of the list (ok when empty)."""
    return max(statuses, key=SEVERITY.__getitem__, default="ok")


def json_safe(value: Any) -> Any:
    """Return value with numpy types made plain, NaN -> None and ±inf -> "inf"/"-inf"."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        x = float(value)
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    return value


def _histograms(current: np.ndarray, reference: np.ndarray | None) -> dict[str, Any] | None:
    """Return counts of current scores in 20 equal-width bins over [min, max], reference alike."""
    cur = current[np.isfinite(current)]
    if cur.size == 0:
        return None
    # A constant current gets numpy's [v - 0.5, v + 0.5] range; values outside the current range
    # on the reference side are counted apart so a plot can show them rather than lose them.
    counts, edges = np.histogram(cur, bins=HIST_BINS, range=(cur.min(), cur.max()))
    out: dict[str, Any] = {"edges": edges.tolist(), "current": counts.tolist()}
    if reference is not None:
        ref = reference[np.isfinite(reference)]
        ref_counts, _ = np.histogram(ref, bins=edges)
        out["reference"] = ref_counts.tolist()
        out["reference_below"] = int((ref < edges[0]).sum())
        out["reference_above"] = int((ref > edges[-1]).sum())
    return out


def _moved_features(top: list[tuple[str, float]]) -> list[str]:
    """Return the names of the top features that carry a real part of the separation."""
    if not top:
        return []
    largest = top[0][1]
    return [name for name, imp in top if imp >= MOVED_FEATURE_SHARE * largest]


def evaluate(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    *,
    features: list[str],
    thresholds: Thresholds,
    is_probability: bool,
    slice_rows: int | None = None,
    av_max_rows: int = 50_000,
    seed: int = 0,
    current_scores: ArrayLike | None = None,
    reference_scores: ArrayLike | None = None,
    method: str = "holdout",
) -> DQReport:
    """Return the data-quality report of current scores against the reference run's scores.

    current_scores / reference_scores, when given, are all the scores of each partition: PSI,
    KS, checks and histograms use them, while the frames (which may be samples) feed the
    adversarial classifier. Without them the frames' "score" columns serve for everything.
    method "holdout" (default) or "kfold5" (the original: 5-fold adversarial validation and
    scipy's ks_2samp on the unsorted scores) picks how the AUC and KS are computed.
    """
    for side, frame in (("current", current), ("reference", reference)):
        if frame is not None and "score" not in frame.columns:
            raise ValueError(f"the {side} frame has no 'score' column")
    cur_scores = as_float_array(current["score"] if current_scores is None else current_scores)
    ref_scores = None
    if reference is not None:
        ref_scores = as_float_array(
            reference["score"] if reference_scores is None else reference_scores
        )
    checks = basic_checks(
        cur_scores, ref_scores, is_probability=is_probability, slice_rows=slice_rows
    )
    check_statuses = [p["severity"] for p in checks["problems"]]
    check_words = "; ".join(p["message"] for p in checks["problems"])
    details: dict[str, Any] = {
        "checks": checks,
        "thresholds": asdict(thresholds),
        "histogram": _histograms(cur_scores, ref_scores),
    }

    if reference is None:
        status = _worst(check_statuses)
        reason = FIRST_DATE + (f"; checks: {check_words}" if check_words else "")
        details.update(psi=None, ks_pvalue=None, av=None)
        return DQReport(status, reason, None, None, None, None, json_safe(details))
    assert ref_scores is not None  # set together with reference

    statuses = list(check_statuses)
    words: list[str] = []

    assert ref_scores is not None  # a reference frame comes with its scores
    # Sorted once: PSI's deciles and bin counts and the KS merge are then cheap at 1M scores.
    ref_sorted, cur_sorted = np.sort(drop_nan(ref_scores)), np.sort(drop_nan(cur_scores))
    p = psi(ref_sorted, cur_sorted)
    psi_status = None
    if p.psi is None:
        side = (
            "both sides are"
            if p.n_ref == p.n_cur == 0
            else "the reference is"
            if p.n_ref == 0
            else "the current side is"
        )
        words.append(f"PSI not computed: {side} empty (after dropping NaN scores)")
    else:
        psi_status, text = _grade("PSI", p.psi, thresholds.psi_warn, thresholds.psi_alert)
        if p.within_noise and psi_status != "ok":
            # On small samples sampling noise alone reaches the threshold: not evidence of drift.
            text += (
                f", but within sampling noise {p.noise:.2f} (n_ref={p.n_ref:,}, "
                f"n_cur={p.n_cur:,}): counted as ok"
            )
            psi_status = "ok"
        statuses.append(psi_status)
        words.append(text)

    columns = list(dict.fromkeys([*features, "score"]))
    missing = [c for c in columns if c not in current.columns or c not in reference.columns]
    used = [c for c in columns if c not in missing]
    av = adversarial_auc(
        reference[used],
        current[used],
        max_rows=av_max_rows,
        seed=seed,
        method=method,
        importance_from=thresholds.auc_warn,  # the reason names moved features from warn on
    )
    av_note = av.note + (f"; features missing from a side: {', '.join(missing)}" if missing else "")
    auc_status = None
    if av.auc is None:
        words.append(f"adversarial validation: {av.note}")  # ends "AUC not computed"
    else:
        auc_status, text = _grade("AUC", av.auc, thresholds.auc_warn, thresholds.auc_alert)
        statuses.append(auc_status)
        words.append(text)
        moved = _moved_features(av.top_features)
        if auc_status != "ok" and moved:
            words.append(f"top moved features: {', '.join(moved)}")

    if method == "kfold5":
        ks_stat, ks_p = ks(ref_scores, cur_scores)
    else:
        ks_stat, ks_p = ks_sorted(ref_sorted, cur_sorted)
    if check_words:
        words.append(f"checks: {check_words}")

    details.update(
        psi={
            "value": p.psi,
            "noise": p.noise,
            "within_noise": p.within_noise,
            "status": psi_status,
            "n_ref": p.n_ref,
            "n_cur": p.n_cur,
            "edges": p.edges,
            "ref_shares": p.ref_shares,
            "cur_shares": p.cur_shares,
            "note": p.note,
        },
        ks_pvalue=ks_p,
        av={
            "auc": av.auc,
            "status": auc_status,
            "n_ref": av.n_ref,
            "n_cur": av.n_cur,
            "top_features": [[name, imp] for name, imp in av.top_features],
            "note": av_note,
            "columns": used,
        },
    )
    return DQReport(
        _worst(statuses), "; ".join(words), p.psi, p.noise, av.auc, ks_stat, json_safe(details)
    )
