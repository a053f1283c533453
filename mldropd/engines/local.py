"""Local engine: one read of the union columns, streamed in Arrow record batches, each batch
scored by every model, scores appended per model with pyarrow. Memory is bounded by the batch
size, not by the table.

Reading and writing run in background threads (mldropd.engines.local_io), so the models score
one batch while the next is read and the previous one is written. The models themselves run one
at a time in this thread: the start/done events then name the one model whose code is running.

Runs inside the sandboxed scoring child (jobs/score_models.py), which reports progress as JSON
lines so the parent can tell which model hung or crashed the process.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from mldropd.batch.keys import KeyFilters
from mldropd.engines.local_io import (
    PART_FILE,
    Prefetch,
    ScoreWriter,
    open_scores_file,
    read_batches,
    scores_schema,
)
from mldropd.modelcall import check_scores, describe_model_error, predict, to_input
from mldropd.settings import FeatureSettings

__all__ = ["PART_FILE", "ModelTask", "Reporter", "score_slice", "scores_schema"]


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


class Reporter:
    """Progress events to the parent, one JSON object a line, flushed at once."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def __call__(self, event: str, *, flush: bool = True, **fields: Any) -> None:
        """Write one event; flush=False only when another event follows at once (it flushes)."""
        self.stream.write(json.dumps({"event": event, **fields}) + "\n")
        if flush:
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
    key_filters: list[dict[str, Any]] | None = None,
) -> int:
    """Stream the slice once and score every model on every batch; return rows read.

    key_filters (mldropd.batch.keys): each model sees only the rows of its key column that the
    key policies keep (one row per entity)."""
    columns = list(
        dict.fromkeys([t.entity_key for t in tasks] + [f for t in tasks for f in t.features])
    )
    # The reader starts at once: the first batches are read while the models load.
    batches = Prefetch(read_batches(features, slice_date, columns, batch_rows))
    writer = ScoreWriter(scored_at)
    inputs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mldropd-input")
    keys = KeyFilters.from_request(key_filters)
    total = 0
    try:
        load_models(tasks, report)
        live = [t for t in tasks if t.error is None]
        for index, read in enumerate(batches):
            total += read.num_rows
            views = keys.views(read)
            order = [t for t in live if views.get(t.entity_key, read).num_rows]
            if not order:
                continue
            # The next model's input is built in a helper thread while this model runs.
            first = views.get(order[0].entity_key, read)
            pending = inputs.submit(to_input, first, order[0].features, order[0].input)
            for j, task in enumerate(order):
                current = pending
                nxt = order[j + 1] if j + 1 < len(order) else None
                if nxt is not None:
                    ahead = views.get(nxt.entity_key, read)
                    pending = inputs.submit(to_input, ahead, nxt.features, nxt.input)
                batch = views.get(task.entity_key, read)
                if not _score_batch(task, batch, index, current, writer, report, nxt is None):
                    live.remove(task)
            writer.check()
        keys.finish()
    except BaseException:
        writer.stop()
        raise
    finally:
        batches.close()
        inputs.shutdown(cancel_futures=True)
    writer.finish()
    for task in live:
        if task.writer is None:  # an empty slice still gets a (empty) partition file
            Path(task.out_dir).mkdir(parents=True, exist_ok=True)
            task.writer = open_scores_file(
                Path(task.out_dir, PART_FILE), pa.int64(), task.entity_key
            )
        task.writer.close()
        task.writer = None
        report("finished", model_run_id=task.model_run_id, rows=task.rows, seconds=task.seconds)
    return total


def _score_batch(
    task: ModelTask,
    batch: pa.RecordBatch,
    index: int,
    model_input: Future[Any],
    writer: ScoreWriter,
    report: Reporter,
    last: bool,
) -> bool:
    """One model on one batch; False when the model failed (it fails alone)."""
    report("start", model_run_id=task.model_run_id, step="score", batch=index)
    started = time.perf_counter()
    try:  # a column the model cannot take fails the model, as when converted here
        scores = predict(task.pipeline, model_input.result(), task.call, task.output)
        check_scores(scores, batch.num_rows)
    except Exception as exc:  # the model's own failure
        task.error = (
            f"scoring batch {index} ({batch.num_rows} rows) failed: {describe_model_error(exc)}"
        )
        writer.discard(task)
        report("failed", model_run_id=task.model_run_id, error=task.error)
        return False
    task.seconds += time.perf_counter() - started
    writer.write(task, batch.column(task.entity_key), scores)
    # The next model's "start" follows at once and flushes both lines in one write; the last
    # model of a batch flushes before the next batch is awaited (then nothing model runs).
    report(
        "done",
        flush=last,
        model_run_id=task.model_run_id,
        step="score",
        batch=index,
        seconds=task.seconds,
    )
    return True
