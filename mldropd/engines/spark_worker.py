"""Python-worker side of the Spark engine: the mapInArrow function applying every model.

Runs inside Spark's Python workers (imported there by reference, so keep it light). Each worker
loads each model once per job from the broadcast dill bytes and keeps it in a module-level
dict keyed by model run id. Scores go straight from the model into that model's Parquet file
for the task, written with the local engine's writer; a model that raises, returns bad scores
or runs out of its time fails alone: its file is deleted and its report row carries the error.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# Python-worker state for the current job: model run id -> loaded pipeline, and seconds spent
# per model (for the time limit). A reused worker clears both when another job reaches it.
_JOB: list[str] = [""]
_MODELS: dict[int, Any] = {}
_USED: dict[int, float] = {}


@dataclass(frozen=True)
class WorkerModel:
    """What a Python worker needs to call one model (its bytes come by broadcast)."""

    model_run_id: int
    model_id: int
    model_version: int
    entity_key: str
    features: tuple[str, ...]
    input: str
    call: str
    output: str
    timeout_s: float


class ModelTimeout(Exception):
    """Raised inside a model's call when its time limit is over."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the model's call with ModelTimeout after `seconds` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise ModelTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _load(spec: WorkerModel, blobs: Any) -> Any:
    if spec.model_run_id not in _MODELS:
        import dill

        _MODELS[spec.model_run_id] = dill.loads(blobs.value[spec.model_run_id])["pipeline"]
    return _MODELS[spec.model_run_id]


REPORT_DDL = "model_run_id long, path string, rows long, error string, seconds double"


REPORT_SCHEMA = pa.schema(
    [
        ("model_run_id", pa.int64()),
        ("path", pa.string()),
        ("rows", pa.int64()),
        ("error", pa.string()),
        ("seconds", pa.float64()),
    ]
)


def _report(run_id: int, path: str | None, rows: int, error: str | None, seconds: float) -> Any:
    return pa.RecordBatch.from_pylist(
        [{"model_run_id": run_id, "path": path, "rows": rows, "error": error, "seconds": seconds}],
        schema=REPORT_SCHEMA,
    )


class _Output:
    """One model's Parquet file for this task, written as the local engine writes its file."""

    def __init__(self, spec: WorkerModel, path: str, stamp: int) -> None:
        self.spec, self.path, self.rows = spec, path, 0
        self.writer: Any = None
        self.constants = [spec.model_id, spec.model_version, spec.model_run_id, stamp]

    def write(self, keys: pa.Array, scores: np.ndarray) -> None:
        from mldropd.engines.local_io import open_scores_file

        if self.writer is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.writer = open_scores_file(Path(self.path), keys.type, self.spec.entity_key)
        n = len(keys)
        arrays = [pa.array(np.full(n, v, dtype=np.int64)) for v in self.constants]
        arrays[-1] = arrays[-1].cast(pa.timestamp("us", tz="UTC"))
        columns = [keys, pa.array(scores, pa.float64()), *arrays]
        self.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.writer.schema))
        self.rows += n

    def close(self, keep: bool) -> str | None:
        if self.writer is not None:
            self.writer.close()
        if not keep or self.writer is None:
            Path(self.path).unlink(missing_ok=True)
            return None
        return self.path


def score_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    job: str,
    specs: list[WorkerModel],
    blobs: Any,
    scratch: str,
    stamp: int,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: every model scores every batch and appends to its own file.

    Yields the task's report, one row per model: its file (None when it wrote nothing), rows,
    seconds, or the error that failed it. The files of a failed task attempt are never listed.
    """
    from pyspark import TaskContext

    from mldropd.modelcall import check_scores, describe_model_error, predict, to_input

    if _JOB[0] != job:  # a reused worker starting another job: forget the last one's models
        _JOB[0] = job
        _MODELS.clear()
        _USED.clear()
    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    attempt = context.attemptNumber() if context is not None else 0
    outputs = {
        s.model_run_id: _Output(
            s,
            f"{scratch}/model_run_id={s.model_run_id}/part-{partition:05d}-{attempt}.parquet",
            stamp,
        )
        for s in specs
    }
    errors: dict[int, str] = {}
    spent = dict.fromkeys(outputs, 0.0)
    for index, batch in enumerate(batches):
        n = batch.num_rows
        if n == 0:  # models need not cope with empty input (the local engine never sends it)
            continue
        for spec in specs:
            run_id = spec.model_run_id
            if run_id in errors:
                continue
            try:
                model = _load(spec, blobs)
            except Exception as exc:
                errors[run_id] = f"loading the model failed: {type(exc).__name__}: {exc}"
                continue
            started = time.perf_counter()
            try:
                with _time_limit(spec.timeout_s - _USED.get(run_id, 0.0)):
                    x = to_input(batch, list(spec.features), spec.input)
                    scores = predict(model, x, spec.call, spec.output)
                check_scores(scores, n)
            except ModelTimeout:
                errors[run_id] = (
                    f"the model did not finish within its time limit of {spec.timeout_s:.0f} s "
                    "(set params.timeout_s or [engine] model_timeout_s) and was stopped"
                )
            except Exception as exc:  # the model's own failure: it fails alone
                errors[run_id] = (
                    f"scoring batch {index} of Spark partition {partition} ({n} rows) failed: "
                    f"{describe_model_error(exc)}"
                )
            seconds = time.perf_counter() - started
            spent[run_id] += seconds
            _USED[run_id] = _USED.get(run_id, 0.0) + seconds
            if run_id not in errors:
                outputs[run_id].write(batch.column(spec.entity_key), scores)
    for run_id, output in outputs.items():
        path = output.close(keep=run_id not in errors)
        yield _report(run_id, path, output.rows, errors.get(run_id), spent[run_id])
