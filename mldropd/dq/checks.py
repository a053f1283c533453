"""Basic checks on one run's scores (row counts, nulls, range, constancy) and the KS test."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from mldropd.dq.psi import as_float_array

# Severity limits, in one place so the docstring of basic_checks and the code cannot disagree.
NULL_ALERT_SHARE = 0.05
ROW_CHANGE_WARN = 0.20
ROW_CHANGE_ALERT = 0.50
SCORED_SHARE_WARN = 0.99
KS_EXACT_MAX = 10_000  # scipy's ks_2samp computes the exact p-value up to this many a side


def ks(reference: ArrayLike, current: ArrayLike) -> tuple[float | None, float | None]:
    """Return ks_2samp (statistic, p-value) on non-NaN scores; (None, None) if a side is empty."""
    ref = as_float_array(reference)
    cur = as_float_array(current)
    ref = ref[~np.isnan(ref)]
    cur = cur[~np.isnan(cur)]
    if ref.size == 0 or cur.size == 0:
        return None, None
    result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def ks_sorted(
    reference: NDArray[np.float64], current: NDArray[np.float64]
) -> tuple[float | None, float | None]:
    """Return (statistic, p-value) of ks_2samp from sorted NaN-free scores, fast on large sides.

    The statistic is ks_2samp's to the bit: the same counts, divisions and subtraction at each
    distinct value of the two sides, counted by one merge of the sorted sides instead of binary
    searches (1M a side: about 0.1 s instead of 0.25 s). Up to ks_2samp's exact
    limit (10,000 a side) the p-value is its own; above it, ks_2samp's Smirnov formula
    (scipy.stats.kstwo at n = n1*n2/(n1+n2)) took 0.6-0.9 s at 1M a side for a small drift, so
    the limiting Kolmogorov distribution stands in: kstwobign.sf(sqrt(n) * D), within 2 %
    relative of it above 10,000 a side (tests/test_dq.py).
    """
    n1, n2 = int(reference.size), int(current.size)
    if n1 == 0 or n2 == 0:
        return None, None
    if max(n1, n2) <= KS_EXACT_MAX:
        result = stats.ks_2samp(reference, current)
        return float(result.statistic), float(result.pvalue)
    both = np.concatenate([reference, current])
    order = np.argsort(both, kind="stable")  # two sorted runs: one O(n) merge
    values = both[order]
    c1 = np.cumsum(order < n1)  # reference scores <= each merged value
    c2 = np.arange(1, both.size + 1) - c1
    last = np.append(values[1:] != values[:-1], True)  # ties counted whole (side="right")
    diffs = c1[last] / n1 - c2[last] / n2
    d = max(float(np.clip(-diffs.min(), 0, 1)), float(diffs.max()))
    m, n = sorted([float(n1), float(n2)], reverse=True)
    pvalue = float(np.clip(stats.kstwobign.sf(np.sqrt(m * n / (m + n)) * d), 0, 1))
    return d, pvalue


def _pct(share: float) -> str:
    """Format a share as a percentage for messages; never rounds a non-zero share to 0.0%."""
    pct = 100.0 * share
    if 0 < pct < 0.1:
        return "<0.1%"
    return f"{pct:.1f}%"


def _std(values: np.ndarray) -> float | None:
    """Population std; exactly 0 for equal values (np.std can leave 1e-17 from the mean)."""
    if values.size == 0:
        return None
    if values.min() == values.max():
        return 0.0
    return float(values.std())


def _problem(severity: str, message: str) -> dict[str, str]:
    """Build one problem entry."""
    return {"severity": severity, "message": message}


def basic_checks(
    current: ArrayLike,
    reference: ArrayLike | None,
    *,
    is_probability: bool,
    slice_rows: int | None,
) -> dict[str, Any]:
    """Return JSON-serialisable basic checks of current scores, with problems and severities.

    Figures: rows, reference_rows, row_change ((rows - reference_rows) / reference_rows),
    scored_share (rows / slice_rows), null_share (NaN/None share of rows), out_of_range_share
    (share of rows outside [0, 1], only when is_probability), constant, and min/mean/max/std
    (population std, ddof=0) over finite non-null scores, None when there are none.

    Problems ("warn" or "alert"):
    - no rows at all -> alert;
    - any null score -> warn, more than 5% null -> alert;
    - any score outside [0, 1] for a probability output (inf included) -> alert;
    - constant scores (at least two non-null scores, all equal) -> warn;
    - row count changed by more than 20% against the reference -> warn, more than 50% -> alert;
    - scored_share below 0.99 -> warn; above 1 (more scores than entities in the slice) -> warn.
    """
    cur = as_float_array(current)
    rows = int(cur.size)
    null_mask = np.isnan(cur)
    values = cur[~null_mask]
    finite = values[np.isfinite(values)]
    problems: list[dict[str, str]] = []

    reference_rows = None if reference is None else int(as_float_array(reference).size)
    row_change: float | None = None
    if reference_rows:
        row_change = (rows - reference_rows) / reference_rows

    scored_share = rows / slice_rows if slice_rows else None
    null_share = float(null_mask.sum()) / rows if rows else None
    out_of_range_share: float | None = None
    if is_probability and rows:
        # inf is outside [0, 1] too; NaN is not counted here (the null check owns it).
        out_of_range_share = float(((values < 0) | (values > 1)).sum()) / rows
    constant = bool(values.size >= 2 and values.min() == values.max())

    if rows == 0:
        problems.append(_problem("alert", "no scores were written"))
    if null_share:
        severity = "alert" if null_share > NULL_ALERT_SHARE else "warn"
        problems.append(_problem(severity, f"{_pct(null_share)} of scores are null/NaN"))
    if out_of_range_share:
        message = f"{_pct(out_of_range_share)} of scores are outside [0, 1]"
        problems.append(_problem("alert", message))
    if constant:
        problems.append(_problem("warn", f"all scores are the same value ({values[0]:.6g})"))
    if row_change is not None and abs(row_change) > ROW_CHANGE_WARN:
        severity = "alert" if abs(row_change) > ROW_CHANGE_ALERT else "warn"
        direction = "more" if row_change > 0 else "fewer"
        problems.append(
            _problem(
                severity,
                f"{_pct(abs(row_change))} {direction} rows than the reference "
                f"({rows:,} vs {reference_rows:,})",
            )
        )
    if reference_rows == 0 and rows:
        problems.append(_problem("warn", "the reference has no rows: row change not computed"))
    if scored_share is not None and scored_share < SCORED_SHARE_WARN:
        problems.append(
            _problem(
                "warn",
                f"only {_pct(scored_share)} of the slice's {slice_rows:,} entities were scored",
            )
        )
    if scored_share is not None and scored_share > 1:
        problems.append(
            _problem(
                "warn", f"{rows:,} scores for {slice_rows:,} entities in the slice (duplicates?)"
            )
        )

    return {
        "rows": rows,
        "reference_rows": reference_rows,
        "row_change": row_change,
        "scored_share": scored_share,
        "null_share": null_share,
        "out_of_range_share": out_of_range_share,
        "constant": constant,
        "min": float(finite.min()) if finite.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "max": float(finite.max()) if finite.size else None,
        "std": _std(finite),
        "problems": problems,
    }
