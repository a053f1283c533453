"""The holdout adversarial validation keeps the meaning of the original 5-fold estimate: on the
drift cases of tests/test_dq.py and on the DQ reference cases below, its AUC is within 0.02 of
method="kfold5" on the same rows."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from mldropd.dq.adversarial import HOLDOUT_MIN_ROWS, adversarial_auc
from mldropd.dq.psi import psi
from tests.support.frames import features_frame

# Each case fits the adversarial classifier twice on up to 50,000 rows a side: minutes of CPU.
pytestmark = pytest.mark.slow

TOLERANCE = 0.02
SIDE = 50_000  # rows a side: [dq] av_max_rows, what a 1M-row slice is sampled to
N_FEATURES = 10


def agree(reference: pd.DataFrame, current: pd.DataFrame, scheme: str, **kwargs: object) -> float:
    """Return the holdout AUC after checking it is within TOLERANCE of the 5-fold AUC."""
    fast = adversarial_auc(reference, current, method="holdout", **kwargs)  # type: ignore[arg-type]
    slow = adversarial_auc(reference, current, method="kfold5", **kwargs)  # type: ignore[arg-type]
    assert fast.auc is not None and slow.auc is not None
    assert scheme in fast.note  # the path this case is meant to test
    assert fast.auc == pytest.approx(slow.auc, abs=TOLERANCE), (fast.auc, slow.auc)
    return fast.auc


# --- the drift cases of tests/test_dq.py (small samples: the 5-fold path of "holdout") -----------


@pytest.mark.parametrize(
    ("seed", "n_ref", "n_cur", "shift", "max_rows"),
    [
        (11, 5_000, 5_000, 0.0, 50_000),  # test_adversarial_auc_is_half_on_one_distribution
        (12, 2_000, 2_000, 3.0, 50_000),  # test_adversarial_auc_finds_a_strong_shift...
        (13, 1_500, 1_200, 0.5, 1_000),  # test_adversarial_auc_is_deterministic_and_samples
        (21, 3_000, 3_000, 0.0, 50_000),  # test_evaluate_ok_without_drift
        (22, 2_000, 2_000, 3.0, 50_000),  # test_evaluate_alerts_on_a_strong_shift...
    ],
)
def test_agrees_on_the_drift_cases_of_test_dq(
    seed: int, n_ref: int, n_cur: int, shift: float, max_rows: int
) -> None:
    rng = np.random.default_rng(seed)
    reference, current = features_frame(rng, n_ref, shift=shift), features_frame(rng, n_cur)
    agree(reference, current, "5-fold", max_rows=max_rows)


# --- the DQ reference cases: 50,000 rows a side (the holdout path), one kind of drift each -------


def base(rng: np.random.Generator) -> pd.DataFrame:
    """SIDE rows of N_FEATURES normal features and a four-level categorical feature."""
    frame = pd.DataFrame(
        rng.normal(size=(SIDE, N_FEATURES)), columns=[f"f{i}" for i in range(N_FEATURES)]
    )
    frame["segment"] = rng.choice(["a", "b", "c", "d"], size=SIDE, p=[0.4, 0.3, 0.2, 0.1])
    return frame


def scored(frame: pd.DataFrame, weights: list[float] | None = None) -> pd.DataFrame:
    """Add a model's score, a logistic function of the first four features."""
    w = np.asarray(weights or [1.0, -0.5, 0.5, -1.0])
    x = np.nan_to_num(frame[[f"f{i}" for i in range(len(w))]].to_numpy())
    return frame.assign(score=1 / (1 + np.exp(-(x @ w))))


def shift(column: str, by: float) -> Callable[[pd.DataFrame, np.random.Generator], None]:
    def drift(frame: pd.DataFrame, rng: np.random.Generator) -> None:
        frame[column] += by

    return drift


def scale(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    frame["f6"] *= 1.3


def many_small(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    for i in range(4, 9):
        frame[f"f{i}"] += 0.05


def correlation(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    # Same marginals, new dependence: only an interaction tells the days apart.
    frame["f8"] = 0.6 * frame["f7"] + 0.8 * frame["f8"]


def categories(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    frame["segment"] = rng.choice(["a", "b", "c", "d"], size=SIDE, p=[0.3, 0.3, 0.25, 0.15])


def missing(frame: pd.DataFrame, rng: np.random.Generator) -> None:
    frame.loc[rng.random(SIDE) < 0.10, "f5"] = np.nan  # the reference has 5 % missing


REFERENCE_CASES: dict[str, Callable[[pd.DataFrame, np.random.Generator], None] | None] = {
    "no drift": None,
    "mean shift 0.1 sd (used feature)": shift("f1", 0.1),
    "mean shift 0.2 sd (unused feature)": shift("f9", 0.2),
    "mean shift 0.5 sd": shift("f2", 0.5),
    "mean shift 3 sd": shift("f0", 3.0),
    "variance x1.3": scale,
    "five features 0.05 sd each": many_small,
    "correlation only": correlation,
    "category shares": categories,
    "missing share 5 % -> 10 %": missing,
    "model changed (score only)": None,
}


@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_agrees_on_the_dq_reference_cases(case: str) -> None:
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    reference, current = base(rng), base(rng)
    if case.startswith("missing"):
        reference.loc[rng.random(SIDE) < 0.05, "f5"] = np.nan
    drift = REFERENCE_CASES[case]
    if drift is not None:
        drift(current, rng)
    weights = [1.1, -0.5, 0.5, -1.0] if case.startswith("model changed") else None
    assert min(len(reference), len(current)) >= HOLDOUT_MIN_ROWS
    reference, current = scored(reference), scored(current, weights)
    auc = agree(reference, current, "holdout: fit on 80%")
    if case != "no drift":
        assert auc > 0.51  # every case is a drift the classifier can see
    if case == "correlation only":
        # Why the classifier runs even when the score's PSI is within its noise: here the
        # score did not move, yet the rows are told apart well enough to warn.
        assert psi(reference["score"], current["score"]).within_noise and auc >= 0.6
