"""Adversarial validation: can a classifier tell this run's rows from the reference run's rows?"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import rankdata
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import permutation_importance
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from threadpoolctl import threadpool_limits

# Two ways to estimate the AUC (method=...):
# - "kfold5" (the original): 5-fold stratified CV, 100 boosting iterations at learning rate 0.1,
#   pooled out-of-fold AUC, sklearn's permutation importance on fold 1. At 50,000 rows a side x
#   41 columns it cost 9.7-12.2 s per model with one OpenMP thread at load ~2-3.
# - "holdout" (the default): one classifier fit on a stratified 80 % of the rows, AUC on the
#   held-out 20 %; 40 iterations at learning rate 0.25 of trees of at most 15 leaves, features
#   binned in at most 63 bins. 7-10x less CPU, and within 0.01 of "kfold5" on every case of
#   tests/test_dq_agreement.py (the test allows 0.02). Measured before choosing (CPU of the 11
#   reference cases, largest difference from "kfold5"): 50 iterations at 0.2, 31 leaves, 255
#   bins (the first holdout classifier): 4.3 s, 0.009; 15 leaves: 3.8 s, 0.010; 63 bins:
#   4.0 s, 0.010; both: 3.3 s, 0.010; both and 40 iterations at 0.25: 2.8 s, 0.006. Fewer trees
#   or rows lose: 30 iterations at 0.3 (31 leaves), or training on half the rows (2-fold), lost
#   0.015-0.06 on interaction-only and many-small drifts; early stopping (patience 5-10) stopped
#   the interaction-only drift before it showed (the loss is flat for the first trees), -0.14. A
#   held-out fifth of a small sample is too few rows for a steady AUC (its standard error is
#   about 0.004 at 10,000 held-out rows a side), so below HOLDOUT_MIN_ROWS a side "holdout"
#   pools 5 folds as "kfold5" does, with its own classifier.
# One OpenMP thread (AV_THREADS): two threads were 6.0 s when the machine was idle but 19-71 s
# when busy (OpenMP threads spin-wait on contended cores); mldropd.batch.quality runs models in
# parallel threads instead. The AUC does not depend on it.
METHODS = ("holdout", "kfold5")
AV_THREADS = 1
HOLDOUT_SHARE = 0.2
HOLDOUT_MIN_ROWS = 25_000  # per side: the held-out fifth then has >= 5,000 rows a side
TOP_FEATURES = 5
IMPORTANCE_ROWS = 5_000  # held-out rows scored per permuted feature; bounds importance cost
MAX_CATEGORIES = 255  # HistGradientBoosting's limit on categories of a native categorical feature


@dataclass(frozen=True)
class Boosting:
    """The classifier's size: boosting iterations, learning rate, leaves per tree, bins."""

    max_iter: int
    learning_rate: float
    max_leaf_nodes: int = 31
    max_bins: int = 255


BOOSTING = {"kfold5": Boosting(100, 0.1), "holdout": Boosting(40, 0.25, 15, 63)}


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
    n_ref = len(ref)
    out = np.empty((n_ref + len(cur), len(columns)), dtype=float)
    categorical = np.zeros(len(columns), dtype=bool)
    for j, name in enumerate(columns):
        a, b = ref[name], cur[name]
        if all(pd.api.types.is_bool_dtype(c) or pd.api.types.is_numeric_dtype(c) for c in (a, b)):
            out[:n_ref, j] = a.to_numpy(dtype=float, na_value=np.nan)
            out[n_ref:, j] = b.to_numpy(dtype=float, na_value=np.nan)
            continue
        col = pd.concat([a, b], ignore_index=True)
        if pd.api.types.is_datetime64_any_dtype(col):
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
    method: str = "holdout",
    importance_from: float | None = None,
) -> AVResult:
    """Return the held-out ROC AUC of a classifier telling current from reference rows.

    importance_from: with method "holdout", rank the features only when the AUC reaches it
    (the report names them only then; below it the ranking is sampling noise). None: always.
    """
    if method not in METHODS:
        raise ValueError(f"unknown adversarial-validation method {method!r}; use one of {METHODS}")
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

    boosting = BOOSTING[method]
    holdout = method == "holdout" and min(n_ref, n_cur) >= HOLDOUT_MIN_ROWS
    x, categorical, y = _matrix(ref, cur, columns, notes)
    with threadpool_limits(limits=AV_THREADS, user_api="openmp"):
        if holdout:
            auc, model, test = _holdout_fit(x, y, categorical, seed, boosting)
            scheme = f"holdout: fit on {1 - HOLDOUT_SHARE:.0%}, AUC on {HOLDOUT_SHARE:.0%}"
        else:
            auc, model, test = _kfold_fit(x, y, categorical, seed, folds, boosting)
            scheme = f"{folds}-fold stratified CV"
        where = "held-out rows" if holdout else "fold 1"
        if method == "kfold5":
            top = _top_features(model, x[test], y[test], columns, seed)
        elif importance_from is None or auc >= importance_from:
            top = _ranked(_permutation_drops(model, x[test], y[test], seed), columns)
        else:
            top = []
            where += f"; not computed, AUC below {importance_from:g}"
    notes.append(
        f"{scheme} on {len(columns)} columns, {boosting.max_iter} boosting iterations at "
        f"learning rate {boosting.learning_rate:g} (at most {boosting.max_leaf_nodes} leaves, "
        f"{boosting.max_bins} bins); importance = drop in held-out AUC when the column is "
        f"permuted ({where})"
    )
    return AVResult(auc, n_ref, n_cur, top, "; ".join(notes))


def _classifier(
    categorical: NDArray[np.bool_], seed: int, boosting: Boosting
) -> HistGradientBoostingClassifier:
    """A fresh HistGradientBoostingClassifier of the given size."""
    # early_stopping off: its internal validation split would make results depend on it, and it
    # stopped interaction-only drifts before they showed (the loss is flat for the first trees).
    return HistGradientBoostingClassifier(
        max_iter=boosting.max_iter,
        learning_rate=boosting.learning_rate,
        max_leaf_nodes=boosting.max_leaf_nodes,
        max_bins=boosting.max_bins,
        early_stopping=False,
        categorical_features=categorical if categorical.any() else None,
        random_state=seed,
    )


def _matrix(
    ref: pd.DataFrame, cur: pd.DataFrame, columns: list[str], notes: list[str]
) -> tuple[NDArray[np.float64], NDArray[np.bool_], NDArray[np.int_]]:
    """Return (design matrix, categorical mask, labels: 0 reference, 1 current)."""
    x, categorical = _design(ref, cur, columns)
    infinite = _infinite_to_nan(x)
    if infinite:
        notes.append(f"{infinite:,} infinite values treated as missing")
    y = np.concatenate([np.zeros(len(ref), dtype=int), np.ones(len(cur), dtype=int)])
    return x, categorical, y


Fitted = tuple[float, HistGradientBoostingClassifier, NDArray[np.intp]]


def _holdout_fit(
    x: NDArray[np.float64],
    y: NDArray[np.int_],
    categorical: NDArray[np.bool_],
    seed: int,
    boosting: Boosting,
) -> Fitted:
    """Return (AUC on a stratified held-out share, the model, the held-out rows)."""
    train, test = train_test_split(
        np.arange(len(y)), test_size=HOLDOUT_SHARE, stratify=y, random_state=seed
    )
    model = _classifier(categorical, seed, boosting)
    model.fit(x[train], y[train])
    return float(roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])), model, test


def _kfold_fit(
    x: NDArray[np.float64],
    y: NDArray[np.int_],
    categorical: NDArray[np.bool_],
    seed: int,
    folds: int,
    boosting: Boosting,
) -> Fitted:
    """Return (pooled out-of-fold AUC, the first fold's model, the first fold's rows)."""
    oof = np.empty(len(y), dtype=float)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    first: tuple[HistGradientBoostingClassifier, NDArray[np.intp]] | None = None
    for train, test in splitter.split(x, y):
        model = _classifier(categorical, seed, boosting)
        model.fit(x[train], y[train])
        oof[test] = model.predict_proba(x[test])[:, 1]
        if first is None:
            first = (model, test)
    assert first is not None
    return float(roc_auc_score(y, oof)), first[0], first[1]


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
    return _ranked(result.importances_mean, columns)


def _ranked(drops: NDArray[np.float64], columns: list[str]) -> list[tuple[str, float]]:
    """Return up to TOP_FEATURES (column, drop) pairs with a positive drop, largest first."""
    order = sorted(range(len(columns)), key=lambda j: (-drops[j], str(columns[j])))
    return [(str(columns[j]), float(drops[j])) for j in order[:TOP_FEATURES] if drops[j] > 0]


def _auc(y: NDArray[np.int_], p: NDArray[np.float64]) -> float:
    """ROC AUC from average ranks (Mann-Whitney U), equal to roc_auc_score's up to rounding."""
    ranks = rankdata(p)
    positives = int(y.sum())
    negatives = len(y) - positives
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _permutation_drops(
    model: HistGradientBoostingClassifier,
    x_test: NDArray[np.float64],
    y_test: NDArray[np.int_],
    seed: int,
) -> NDArray[np.float64]:
    """Drop in held-out AUC when each column alone is permuted (n_repeats=1), per column.

    What sklearn's permutation_importance(scoring="roc_auc", n_repeats=1, max_samples=...)
    measures, without its per-call checks: those took half of the adversarial validation's time
    at 50,000 rows a side (roc_auc_score validates its input on every call).
    """
    drops = np.zeros(x_test.shape[1])
    if len(np.unique(y_test)) < 2:
        return drops
    rng = np.random.default_rng(seed)
    if len(y_test) > IMPORTANCE_ROWS:
        rows = np.sort(rng.choice(len(y_test), size=IMPORTANCE_ROWS, replace=False))
        x_test, y_test = x_test[rows], y_test[rows]
    x = np.array(x_test, copy=True)
    base = _auc(y_test, model.predict_proba(x)[:, 1])
    for j in range(x.shape[1]):
        kept = x[:, j].copy()
        x[:, j] = rng.permutation(kept)
        drops[j] = base - _auc(y_test, model.predict_proba(x)[:, 1])
        x[:, j] = kept
    return drops
