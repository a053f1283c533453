"""Call a loaded model on a batch of features and check what it returns.

Used only in child processes (validation dry run and scoring), never in the daemon.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class ModelOutputError(Exception):
    """The model ran but returned something that is not one finite score per row."""


def to_input(batch: pa.Table | pa.RecordBatch, features: list[str], input_kind: str) -> Any:
    """The model's input for one batch: columns in the model's order, as the model asked."""
    columns = batch.select(features)
    if input_kind == "polars":
        import polars as pl

        return pl.from_arrow(columns)
    if input_kind == "numpy":
        # Column-major, like np.asarray(frame[features]) of a pandas frame: each column is one
        # contiguous copy, and linear models give bit-identical results to scoring the frame.
        out = np.empty((columns.num_rows, columns.num_columns), dtype=np.float64, order="F")
        for j, col in enumerate(columns.columns):
            out[:, j] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
        return out
    # One copy into a single writeable float block (what notebooks get from to_pandas()), in
    # the calling thread only: when scoring, a model runs meanwhile and Arrow's thread pool
    # would take its cores (same values either way).
    return columns.to_pandas(use_threads=False)


def predict(pipeline: Any, x: Any, call: str, output: str) -> np.ndarray:
    """Scores for one batch as float64, exactly as the model returns them."""
    if call == "callable":
        raw = pipeline(x)
    elif output == "predict" or call == "predict":
        raw = pipeline.predict(x)
    else:
        proba = np.asarray(pipeline.predict_proba(x))
        column = int(output.split(":", 1)[1]) if ":" in output else 1
        if proba.ndim != 2 or proba.shape[1] <= column:
            raise ModelOutputError(
                f"predict_proba returned shape {proba.shape}; output {output!r} needs column "
                f"{column}. Set `output` to an existing column or 'predict'."
            )
        raw = proba[:, column]
    return _as_scores(raw)


def _as_scores(raw: Any) -> np.ndarray:
    if hasattr(raw, "to_numpy"):  # pandas/polars Series
        raw = raw.to_numpy()
    try:
        scores = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelOutputError(f"the model returned values that are not numbers ({exc})") from None
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1:
        raise ModelOutputError(
            f"the model returned an array of shape {scores.shape}; expected one score per row (1-D)"
        )
    return scores


def check_scores(scores: np.ndarray, rows: int) -> None:
    """Raise ModelOutputError unless there is exactly one finite score per input row."""
    if len(scores) != rows:
        raise ModelOutputError(f"the model returned {len(scores)} scores for {rows} rows")
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise ModelOutputError(f"the model returned {bad} NaN or infinite scores out of {rows}")


def describe_model_error(exc: BaseException) -> str:
    """The model's exception in words, with a hint for the failure every notebook user meets:
    a NameError inside the model's code means a notebook global (`np`, `pd`, a helper) was not
    saved with it, because the file was written without dill's recurse=True. A wrong answer
    (ModelOutputError) is already in words."""
    if isinstance(exc, ModelOutputError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, NameError):
        text += (
            ". The model uses a notebook name that was not saved with it: save it with "
            "mldropd.save_model(...) or dill.dump(obj, f, recurse=True) (recurse=True stores the "
            "globals a function uses), or import the module inside the function"
        )
    return text
