"""Local engine: one DuckDB read of the union columns, streamed in Arrow record batches, each
batch scored by every model, scores appended per model with pyarrow. Memory is bounded by the
batch size, not by the table.

Runs inside the sandboxed scoring child (jobs/score_models.py), which reports progress as JSON
lines so the parent can tell which model hung or crashed the process.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mldropd.features import FeatureSource
from mldropd.modelcall import check_scores, predict, to_input
from mldropd.settings import FeatureSettings

PART_FILE = "part-0.parquet"


@dataclass
class ModelTask:
    """One model to score in this process."""

    model_run_id: int
    model_id: int
    model_version: int
    path: str  # local copy of the dill file
    features: list[str]
    input: str
    call: str
    output: str
    entity_key: str
    out_dir: str
    pipeline: Any = None
    writer: pq.ParquetWriter | None = None
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelTask:
        return cls(
            **{
                k: data[k]
                for k in (
                    "model_run_id",
                    "model_id",
                    "model_version",
                    "path",
                    "features",
                    "input",
                    "call",
                    "output",
                    "entity_key",
                    "out_dir",
                )
            }
        )


def scores_schema(key_type: pa.DataType, entity_key: str) -> pa.Schema:
    """Columns of a scores partition file (dt and model are in the path)."""
    return pa.schema(
        [
            (entity_key, key_type),
            ("score", pa.float64()),
            ("model_id", pa.int64()),
            ("model_version", pa.int64()),
            ("run_id", pa.int64()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
        ]
    )


class Reporter:
    """Progress events to the parent, one JSON object a line, flushed at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        self.stream.flush()


def _fail(task: ModelTask, message: str, report: Reporter) -> None:
    task.error = message
    if task.writer is not None:
        task.writer.close()
        task.writer = None
    Path(task.out_dir, PART_FILE).unlink(missing_ok=True)
    report("failed", model_run_id=task.model_run_id, error=message)


def load_models(tasks: list[ModelTask], report: Reporter) -> None:
    """Load each model once for the whole batch; a model that fails to load fails alone."""
    import dill

    for task in tasks:
        report("start", model_run_id=task.model_run_id, step="load")
        try:
            with open(task.path, "rb") as f:
                obj = dill.load(f)
            task.pipeline = obj["pipeline"]
        except Exception as exc:
            _fail(task, f"loading the model failed: {type(exc).__name__}: {exc}", report)
            continue
        report("done", model_run_id=task.model_run_id, step="load")


def score_slice(
    features: FeatureSettings,
    slice_date: dt.date,
    tasks: list[ModelTask],
    batch_rows: int,
    scored_at: dt.datetime,
    report: Reporter,
) -> int:
    """Stream the slice once and score every model on every batch; return rows read."""
    source = FeatureSource(features)
    columns = list(
        dict.fromkeys([t.entity_key for t in tasks] + [f for t in tasks for f in t.features])
    )
    load_models(tasks, report)
    live = [t for t in tasks if t.error is None]
    total = 0
    with source.connect() as con:
        reader = con.sql(source.select_sql(slice_date, columns)).to_arrow_reader(batch_rows)
        for index, batch in enumerate(reader):
            total += batch.num_rows
            for task in list(live):
                report("start", model_run_id=task.model_run_id, step="score", batch=index)
                started = time.perf_counter()
                try:
                    scores = predict(
                        task.pipeline,
                        to_input(batch, task.features, task.input),
                        task.call,
                        task.output,
                    )
                    check_scores(scores, batch.num_rows)
                except Exception as exc:  # the model's own failure: it fails alone
                    _fail(
                        task,
                        f"scoring batch {index} ({batch.num_rows} rows) failed: "
                        f"{type(exc).__name__}: {exc}",
                        report,
                    )
                    live.remove(task)
                    continue
                _write(task, batch, scores, scored_at)
                task.seconds += time.perf_counter() - started
                report(
                    "done",
                    model_run_id=task.model_run_id,
                    step="score",
                    batch=index,
                    seconds=task.seconds,
                )
    for task in live:
        if task.writer is None:  # an empty slice still gets a (empty) partition file
            task.writer = pq.ParquetWriter(
                Path(task.out_dir, PART_FILE), scores_schema(pa.int64(), task.entity_key)
            )
        task.writer.close()
        task.writer = None
        report("finished", model_run_id=task.model_run_id, rows=task.rows, seconds=task.seconds)
    return total


def _write(task: ModelTask, batch: pa.RecordBatch, scores: Any, scored_at: dt.datetime) -> None:
    keys = batch.column(task.entity_key)
    n = batch.num_rows
    if task.writer is None:
        Path(task.out_dir).mkdir(parents=True, exist_ok=True)
        task.writer = pq.ParquetWriter(
            Path(task.out_dir, PART_FILE), scores_schema(keys.type, task.entity_key)
        )

    def constant(value: int) -> pa.Array:
        return pa.array(np.full(n, value, dtype=np.int64))

    stamp = pa.array(np.full(n, int(scored_at.timestamp() * 1_000_000), dtype=np.int64)).cast(
        pa.timestamp("us", tz="UTC")
    )
    table = pa.Table.from_arrays(
        [
            keys,
            pa.array(scores, pa.float64()),
            constant(task.model_id),
            constant(task.model_version),
            constant(task.model_run_id),
            stamp,
        ],
        schema=task.writer.schema,
    )
    task.writer.write_table(table)
    task.rows += n
