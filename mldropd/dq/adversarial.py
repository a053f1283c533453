"""Adversarial validation: can a classifier tell this run's rows from the reference run's rows?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

# Cost measured at 50,000 rows a side x 41 columns (40 features + score), 5 folds, 100
# iterations, on a 2-core machine shared with other jobs: one OpenMP thread 9.7-12.2 s at load
# ~2-3 and 18-22 s at load ~3-4 (importance 1.5-2 s of it); two threads 6.0 s when the machine
# was idle but 19-71 s when busy (OpenMP threads spin-wait on contended cores). Hence one thread
# (AV_THREADS): slower at best, never pathological. The AUC does not depend on the thread count.
MAX_ITER = 100
AV_THREADS = 1
TOP_FEATURES = 5
IMPORTANCE_ROWS = 5_000  # held-out rows scored per permuted feature; bounds importance cost
MAX_CATEGORIES = 255  # HistGradientBoosting's limit on categories of a native categorical feature


@dataclass(frozen=True)
class AVResult:
    """Cross-validated AUC of current-vs-reference rows and the features that separate them."""

    auc: float | None
    n_ref: int
    n_cur: int
    top_features: list[tuple[str, float]]
    note: str


def _sample(frame: pd.DataFrame, max_rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """Return at most max_rows rows, drawn without replacement, kept in their original order."""
    if len(frame) <= max_rows:
        return frame
    idx = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[idx]


def _design(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """Return a float matrix of both sides stacked (reference first) and a categorical mask."""
    both = pd.concat([ref[columns], cur[columns]], ignore_index=True)
    out = np.empty((len(both), len(columns)), dtype=float)
    categorical = np.zeros(len(columns), dtype=bool)
    for j, name in enumerate(columns):
        col = both[name]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            out[:, j] = col.to_numpy(dtype=float, na_value=np.nan)
        elif pd.api.types.is_datetime64_any_dtype(col):
            out[:, j] = np.where(col.isna(), np.nan, col.astype("int64").to_numpy(dtype=float))
        else:
            # Codes are shared by both sides (factorised together), so a category means the same
            # thing in reference and current; missing values stay NaN.
            codes, uniques = pd.factorize(col.astype("string"), sort=True)
            out[:, j] = np.where(codes < 0, np.nan, codes.astype(float))
            categorical[j] = len(uniques) <= MAX_CATEGORIES  # else ordinal codes, still usable
    return out, categorical


def _infinite_to_nan(x: NDArray[np.float64]) -> int:
    """Turn ±inf into NaN in place (the binner's quantiles break on inf); return how many."""
    infinite = np.isinf(x)
    count = int(infinite.sum())
    x[infinite] = np.nan
    return count


def adversarial_auc(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    max_rows: int = 50_000,
    seed: int = 0,
    folds: int = 5,
) -> AVResult:
    """Return the pooled out-of-fold ROC AUC of a classifier telling current from reference rows."""
    columns = [c for c in reference.columns if c in set(current.columns)]
    skipped = sorted(set(reference.columns).symmetric_difference(current.columns), key=str)
    notes: list[str] = []
    if skipped:
        notes.append(f"columns not on both sides ignored: {', '.join(map(str, skipped))}")

    rng = np.random.default_rng(seed)
    ref = _sample(reference, max_rows, rng)
    cur = _sample(current, max_rows, rng)
    n_ref, n_cur = len(ref), len(cur)
    if len(reference) > max_rows or len(current) > max_rows:
        notes.append(f"sampled to at most {max_rows:,} rows a side (seed {seed})")
    if not columns:
        notes.append("no common columns: AUC not computed")
        return AVResult(None, n_ref, n_cur, [], "; ".join(notes))
    if min(n_ref, n_cur) < 2 * folds:
        notes.append(
            f"fewer than {2 * folds} rows on a side ({n_ref} reference, {n_cur} current): "
            "AUC not computed"
        )
        return AVResult(None, n_ref, n_cur, [], "; ".join(notes))

    with threadpool_limits(limits=AV_THREADS, user_api="openmp"):
        auc, top = _fit_and_score(ref, cur, columns, seed, folds, notes)
    notes.append(
        f"{folds}-fold stratified CV on {len(columns)} columns; "
        "importance = drop in held-out AUC when the column is permuted (fold 1)"
    )
    return AVResult(auc, n_ref, n_cur, top, "; ".join(notes))


def _fit_and_score(
    ref: pd.DataFrame,
    cur: pd.DataFrame,
    columns: list[str],
    seed: int,
    folds: int,
    notes: list[str],
) -> tuple[float, list[tuple[str, float]]]:
    """Return (pooled out-of-fold AUC, top features); appends remarks to notes."""
    x, categorical = _design(ref, cur, columns)
    n_ref, n_cur = len(ref), len(cur)
    infinite = _infinite_to_nan(x)
    if infinite:
        notes.append(f"{infinite:,} infinite values treated as missing")
    y = np.concatenate([np.zeros(n_ref, dtype=int), np.ones(n_cur, dtype=int)])
    oof = np.empty(len(y), dtype=float)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    first_model: HistGradientBoostingClassifier | None = None
    first_test: NDArray[np.intp] | None = None
    for train, test in splitter.split(x, y):
        # early_stopping off: the internal validation split would make results depend on it.
        model = HistGradientBoostingClassifier(
            max_iter=MAX_ITER,
            early_stopping=False,
            categorical_features=categorical if categorical.any() else None,
            random_state=seed,
        )
        model.fit(x[train], y[train])
        oof[test] = model.predict_proba(x[test])[:, 1]
        if first_model is None:
            first_model, first_test = model, test
    auc = float(roc_auc_score(y, oof))

    assert first_model is not None and first_test is not None
    return auc, _top_features(first_model, x[first_test], y[first_test], columns, seed)


def _top_features(
    model: HistGradientBoostingClassifier,
    x_test: NDArray[np.float64],
    y_test: NDArray[np.int_],
    columns: list[str],
    seed: int,
) -> list[tuple[str, float]]:
    """Return up to five (column, AUC drop) pairs with a positive drop, largest first."""
    # Importance method, chosen to be cheap and deterministic: permutation importance of the
    # first fold's model on its own held-out fold, n_repeats=1, on at most IMPORTANCE_ROWS
    # rows drawn with the run's seed. It measures what the classifier actually used to separate
    # the runs (unlike gain, which HistGradientBoosting does not expose) and costs one
    # predict per column on a few thousand rows (1.5-2 s for 41 columns on a busy machine).
    if len(np.unique(y_test)) < 2:
        return []
    result = permutation_importance(
        model,
        x_test,
        y_test,
        scoring="roc_auc",
        n_repeats=1,
        random_state=seed,
        max_samples=min(IMPORTANCE_ROWS, len(y_test)),
        n_jobs=1,
    )
    drops = result.importances_mean
    order = sorted(range(len(columns)), key=lambda j: (-drops[j], str(columns[j])))
    return [(str(columns[j]), float(drops[j])) for j in order[:TOP_FEATURES] if drops[j] > 0]
