"""Data frames for the DQ tests: features and a score, shifted on demand."""

from __future__ import annotations

import numpy as np
import pandas as pd


def features_frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    """Five normal features (f1 shifted), a score from f0 + f1 and a categorical column."""
    x = rng.normal(size=(n, 5))
    x[:, 1] += shift
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(5)])
    frame.loc[rng.random(n) < 0.05, "f2"] = np.nan  # the classifier must cope with NaN
    frame["colour"] = rng.choice(["red", "green", None], size=n)
    frame["score"] = 1 / (1 + np.exp(-(frame.f0 + frame.f1)))
    return frame
