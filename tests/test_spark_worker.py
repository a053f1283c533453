"""The Spark worker's scoring function, driven directly (no Spark): a task attempt that broke
off leaves batches in its hosts; the next attempt in the same Python worker must not take
their answers for its own."""

from __future__ import annotations

import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldropd import save_model
from mldropd.engines import spark_worker
from mldropd.engines.spark_worker import WorkerModel, score_partition

pytestmark = pytest.mark.slow


def _batches(start: int, count: int, rows: int = 100) -> Iterator[pa.RecordBatch]:
    for i in range(count):
        keys = np.arange(start + i * rows, start + (i + 1) * rows, dtype=np.int64)
        yield pa.record_batch({"entity_id": keys, "x": keys.astype(np.float64)})


def _broken(start: int) -> Iterator[pa.RecordBatch]:
    yield from _batches(start, 3)
    raise OSError("the executor lost its input")  # as a failed Spark read would


def test_a_retried_task_gets_only_its_own_scores(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.dill", pipeline=lambda f: f["x"].to_numpy() * 2, features=["x"])
    spec = WorkerModel(1, 1, 1, 1, "entity_id", ("x",), "pandas", "callable", "predict", 60.0)
    blobs = types.SimpleNamespace(value={1: Path(path).read_bytes()})
    kwargs: dict[str, Any] = {
        "job": "job-1",
        "specs": [spec],
        "blobs": blobs,
        "stamp": 1,
        "sandbox": {"require": []},
        "memory_mb": 4096,
    }
    try:
        with pytest.raises(OSError, match="lost its input"):
            list(score_partition(_broken(10_000), scratch=str(tmp_path / "a"), **kwargs))
        report = list(score_partition(_batches(0, 2), scratch=str(tmp_path / "b"), **kwargs))
        row = report[0].to_pylist()[0]
        assert row["error"] is None and row["rows"] == 200, row
        got = pq.read_table(row["path"]).to_pandas()
        assert got["entity_id"].tolist() == list(range(200))  # none of the broken attempt's keys
        assert np.array_equal(got["score"], got["entity_id"] * 2.0)
    finally:
        for owner in spark_worker._OWNERS.values():
            owner.close()
        spark_worker._OWNERS.clear()
        spark_worker._JOB[0] = ""
        for server in spark_worker._SERVER:
            server.stop()
        spark_worker._SERVER.clear()
