"""Python-worker side of the Spark engine: the mapInArrow function applying every model.

Runs inside Spark's Python workers (imported there by reference). The worker is the trusted
side of its partitions, as the batch job is for the local engine: model code never runs in it.
Each worker starts one sandbox fork server (kept for the worker's life: Spark reuses Python
workers across tasks and jobs), and per job one sandboxed model host per owner, confined with
whatever layers the executor's kernel offers ([sandbox] require is checked there too). The
models are sent their dill bytes (from the broadcast) once per job and worker; every Arrow
batch goes to each owner's host with only that owner's columns; the scores come back checked
and go into each model's Parquet file for the task, written with the local engine's writer.
A model that raises, hangs, lies or crashes its host fails alone: its file is deleted and its
report row carries the error.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# Python-worker state: the fork server (for the worker's life) and, for the current job, one
# scorer per owner. A reused worker reaching another job closes the last job's hosts.
_SERVER: list[Any] = []
_JOB: list[str] = [""]
_OWNERS: dict[tuple[int, str], Any] = {}


@dataclass(frozen=True)
class WorkerModel:
    """What a Python worker needs to call one model (its bytes come by broadcast)."""

    model_run_id: int
    model_id: int
    model_version: int
    owner_id: int
    entity_key: str
    features: tuple[str, ...]
    input: str
    call: str
    output: str
    timeout_s: float


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


def _sandboxes(sandbox: dict[str, Any]) -> Any:
    """This worker's fork server, started once (it imports the model libraries once)."""
    from mldropd.sandbox.setup import Sandboxes
    from mldropd.settings import Settings

    if not _SERVER:
        settings = Settings.from_dict({"sandbox": sandbox})
        settings.server.work_dir = tempfile.mkdtemp(prefix="mldropd-spark-worker-")
        started = Sandboxes.start(settings, check_home=False)
        _SERVER.append(started)
        atexit.register(started.stop)
    return _SERVER[0]


def _owners(job: str, specs: list[WorkerModel], blobs: Any, sandbox: dict[str, Any],
            memory_mb: int) -> dict[tuple[int, str], Any]:  # fmt: skip
    """The job's scorers in this worker, one per owner (and key), started at the first task."""
    from mldropd.engines.base import ModelTask
    from mldropd.engines.owner import OwnerScorer

    if _JOB[0] != job:  # a reused worker starting another job: end the last one's hosts
        for owner in _OWNERS.values():
            with contextlib.suppress(Exception):
                owner.close()
        _OWNERS.clear()
        _JOB[0] = job
        sandboxes = _sandboxes(sandbox)
        groups: dict[tuple[int, str], list[ModelTask]] = {}
        for s in specs:
            task = ModelTask(s.model_run_id, s.model_id, s.model_version, s.owner_id,
                             Path(f"broadcast:{s.model_run_id}"), s.features, s.input, s.call,
                             s.output, s.entity_key, Path("/nonexistent"), s.timeout_s)  # fmt: skip
            groups.setdefault((s.owner_id, s.entity_key), []).append(task)
        for key, tasks in groups.items():
            owner = OwnerScorer(sandboxes, key[0], tasks, memory_mb,
                                blob_of=lambda t: blobs.value[t.model_run_id])  # fmt: skip
            try:
                owner.start()
            except Exception as exc:  # no sandbox here: every model of the owner says why
                owner.fail_all(f"the model's sandbox could not be started on the executor: {exc}")
            _OWNERS[key] = owner
    return _OWNERS


def score_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    job: str,
    specs: list[WorkerModel],
    blobs: Any,
    scratch: str,
    stamp: int,
    sandbox: dict[str, Any],
    memory_mb: int,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: every owner's host scores every batch; scores go to files here.

    Yields the task's report, one row per model: its file (None when it wrote nothing), rows,
    seconds, or the error that failed it. The files of a failed task attempt are never listed.
    """
    from pyspark import TaskContext

    owners = _owners(job, specs, blobs, sandbox, memory_mb)
    for owner in owners.values():  # a task attempt of this job that broke off in this worker
        owner.step(None)  # left batches in its hosts: their answers are not this task's
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
    used_before = {
        owner.models[slot].task.model_run_id: owner.seconds_of(slot)
        for owner in owners.values()
        for slot in owner.models
    }

    def write(owner: Any, collected: list[Any]) -> None:
        for view, results in collected:
            keys = view.column(view.schema.get_field_index(owner.entity_key))
            for slot, scores in results.items():
                outputs[owner.models[slot].task.model_run_id].write(keys, scores)

    # Each host gets batch n+1 before its answers to batch n are read (as in the local engine).
    for index, batch in enumerate(batches):
        if batch.num_rows == 0:  # models need not cope with empty input (local never sends it)
            continue
        for owner in owners.values():
            write(owner, owner.step(batch, index))
    for owner in owners.values():
        write(owner, owner.step(None))
    for owner in owners.values():
        for slot, model in owner.models.items():
            run_id = model.task.model_run_id
            error = owner.errors.get(slot)
            if error is not None:  # which of the slice's partitions, for the owner and the log
                error = f"Spark partition {partition}: {error}"
            path = outputs[run_id].close(keep=error is None)
            seconds = owner.seconds_of(slot) - used_before.get(run_id, 0.0)
            yield _report(run_id, path, outputs[run_id].rows, error, seconds)
