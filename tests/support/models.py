"""Model files built by the tests (the conftest also builds the demo's LightGBM and Pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dill
import numpy as np
from sklearn.linear_model import LogisticRegression


def write_small_model(path: Path) -> Path:
    """A small valid model file: quick to validate, so tests can upload it many times."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    pipeline = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    path.write_bytes(dill.dumps({"pipeline": pipeline, "features": ["f00", "f01"]}, recurse=True))
    return path


def slow_model(sleep_s: float) -> Any:
    """A model that sleeps on every batch it scores (built in a function, so dill stores it by
    value, as a notebook function)."""

    def slow(frame: Any) -> Any:
        import time

        time.sleep(sleep_s)
        return np.full(len(frame), 0.25)

    return slow
