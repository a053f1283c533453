"""Population stability index (PSI) exactly as DESIGN.md "Data quality, per model run" defines.

Other teams recompute these numbers with their own tools, so every step follows the written
definition literally: inner edges are the reference quantiles from ``numpy.quantile`` (default
linear method), outer edges are -inf/+inf, bins are closed on the left, shares are clipped below
at 1e-4 without renormalising, and ``PSI = sum((cur - ref) * ln(cur / ref))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

SHARE_FLOOR = 1e-4  # clip floor for empty bins; keeps ln() finite, not renormalised on purpose


@dataclass(frozen=True)
class PSIResult:
    """PSI of one current sample against one reference sample, with what was used to get it."""

    psi: float | None
    noise: float | None
    within_noise: bool
    n_ref: int
    n_cur: int
    edges: list[float]
    ref_shares: list[float]
    cur_shares: list[float]
    note: str


def as_float_array(values: ArrayLike | Any) -> NDArray[np.float64]:
    """Return values as a 1-d float array; None, pandas NA and NaN all become NaN."""
    if hasattr(values, "to_numpy"):  # pandas Series / nullable dtypes: pd.NA needs na_value
        arr = values.to_numpy(dtype=float, na_value=np.nan)
    else:
        arr = np.asarray(values, dtype=float)
    return np.ravel(arr)


def drop_nan(values: ArrayLike | Any) -> NDArray[np.float64]:
    """Return the non-NaN values as a float array (NaN is the null check's business, not PSI's)."""
    arr = as_float_array(values)
    return arr[~np.isnan(arr)]


def reference_edges(reference: NDArray[np.float64], bins: int) -> NDArray[np.float64]:
    """Return the raw inner edges: reference quantiles at i/bins for i in 1..bins-1."""
    # Python floats i/bins, as written in the definition; numpy's default (linear) method.
    # Its float steps are part of the definition: it interpolates from the upper neighbour when
    # the weight is >= 0.5, so the 0.8 quantile of [-4, 1] is 2.2e-16, not 0. Recompute with
    # numpy.quantile itself, not exact arithmetic, or values lying on an edge may change bins.
    with np.errstate(invalid="ignore"):  # inf - inf between two infinite neighbours -> NaN
        return np.asarray(np.quantile(reference, [i / bins for i in range(1, bins)]), dtype=float)


def bin_shares(values: NDArray[np.float64], edges: ArrayLike) -> NDArray[np.float64]:
    """Return clipped shares of values in bins [e_i, e_i+1) over sorted inner edges, ±inf ends."""
    inner = np.asarray(edges, dtype=float)
    n_bins = inner.size + 1
    # side="right": a value equal to an edge goes to the bin that starts at it (left-closed).
    idx = np.searchsorted(inner, values, side="right")
    counts = np.bincount(idx, minlength=n_bins).astype(float)
    return np.clip(counts / values.size, SHARE_FLOOR, None)


def psi_from_shares(ref_shares: ArrayLike, cur_shares: ArrayLike) -> float:
    """Return sum((cur - ref) * ln(cur / ref)) over already clipped shares."""
    ref = np.asarray(ref_shares, dtype=float)
    cur = np.asarray(cur_shares, dtype=float)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_with_edges(reference: ArrayLike, current: ArrayLike, edges: ArrayLike) -> float:
    """Return PSI over fixed inner edges (sorted, unique); NaN dropped; both sides non-empty."""
    ref = drop_nan(reference)
    cur = drop_nan(current)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("PSI needs at least one non-NaN value on each side")
    return psi_from_shares(bin_shares(ref, edges), bin_shares(cur, edges))


def noise_level(n_bins: int, n_ref: int, n_cur: int) -> float:
    """Return the PSI expected from sampling noise alone: (bins - 1) * (1/n_ref + 1/n_cur)."""
    return (n_bins - 1) * (1.0 / n_ref + 1.0 / n_cur)


def _edges_note(
    ref: NDArray[np.float64], raw: NDArray[np.float64], used: NDArray[np.float64], bins: int
) -> str:
    """Say in words how the raw deciles became the edges actually used."""
    n_bins = used.size + 1
    if ref.min() == ref.max():
        return f"reference is constant ({_num(ref[0])}): 1 inner edge, 2 bins used"
    if used.size == 1 and raw.size > 1:
        return (
            f"reference has ties: all {raw.size} inner quantiles equal {_num(used[0])}, "
            "1 inner edge, 2 bins used"
        )
    merged = raw.size - used.size
    if merged:
        word = "decile" if bins == 10 else "quantile edge"
        return (
            f"reference has ties: {merged} duplicate {word}{'s' if merged != 1 else ''} "
            f"merged, {n_bins} bins used"
        )
    return f"{n_bins} bins used"


def _num(x: float) -> str:
    """Format a number briefly for notes."""
    return f"{x:.6g}"


def psi(reference: ArrayLike, current: ArrayLike, bins: int = 10) -> PSIResult:
    """Return the PSI of current against reference with its noise level and the bins used."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    ref = drop_nan(reference)
    cur = drop_nan(current)
    n_ref, n_cur = int(ref.size), int(cur.size)
    if n_ref == 0:
        side = "both sides are empty" if n_cur == 0 else "reference side is empty"
        return PSIResult(
            None,
            None,
            False,
            n_ref,
            n_cur,
            [],
            [],
            [],
            f"{side} (after dropping NaN): PSI not computed",
        )

    raw = reference_edges(ref, bins)
    notes: list[str] = []
    if np.isnan(raw).any():
        # Only when the reference holds ±inf: numpy's interpolation can compute inf - inf.
        raw = raw[~np.isnan(raw)]
        notes.append("reference has infinite values; undefined quantiles dropped")
    used = np.unique(raw)  # sorted, duplicates (ties in the reference) merged
    notes.insert(0, _edges_note(ref, raw, used, bins) if used.size else "no usable edges")
    ref_shares = bin_shares(ref, used)
    edges = [float(e) for e in used]
    if n_cur == 0:
        notes.append("current side is empty (after dropping NaN): PSI not computed")
        return PSIResult(
            None,
            None,
            False,
            n_ref,
            n_cur,
            edges,
            [float(s) for s in ref_shares],
            [],
            "; ".join(notes),
        )

    cur_shares = bin_shares(cur, used)
    value = psi_from_shares(ref_shares, cur_shares)
    noise = noise_level(used.size + 1, n_ref, n_cur)
    within = bool(value <= noise)
    if within:
        notes.append(f"PSI {value:.4f} is within sampling noise {noise:.4f}")
    return PSIResult(
        psi=value,
        noise=noise,
        within_noise=within,
        n_ref=n_ref,
        n_cur=n_cur,
        edges=edges,
        ref_shares=[float(s) for s in ref_shares],
        cur_shares=[float(s) for s in cur_shares],
        note="; ".join(notes),
    )
