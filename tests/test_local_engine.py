"""The local engine's streaming path: reader thread, input thread, writer thread, protocol."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldropd import save_model
from mldropd.engines.local import PART_FILE, ModelTask, Reporter, score_slice
from mldropd.settings import FeatureSettings

DAY = dt.date(2026, 3, 2)
SCORED_AT = dt.datetime(2026, 3, 2, 6, tzinfo=dt.UTC)


def _features(root: Path, parts: list[pa.Table], row_group_size: int) -> FeatureSettings:
    folder = root / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    for i, part in enumerate(parts):
        pq.write_table(part, folder / f"part-{i}.parquet", row_group_size=row_group_size)
    return FeatureSettings(kind="parquet", path=str(root), entity_key="entity_id")


def _slice(start: int, n: int) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table(
        {
            "entity_id": np.arange(start, start + n, dtype=np.int64),
            "x": rng.standard_normal(n),
            "y": rng.standard_normal(n),
            "kind": pa.array(["a", "b"] * (n // 2) + ["a"] * (n % 2)).dictionary_encode(),
        }
    )


def _task(
    tmp: Path,
    run_id: int,
    fn: Callable[[Any], Any],
    features: list[str],
    input_kind: str = "pandas",
) -> ModelTask:
    path = save_model(
        tmp / f"m{run_id}.dill", pipeline=fn, features=features, name=f"m{run_id}", input=input_kind
    )
    return ModelTask(
        run_id,
        run_id,
        1,
        str(path),
        features,
        input_kind,
        "callable",
        "predict",
        "entity_id",
        str(tmp / f"out-{run_id}"),
    )


def _run(
    settings: FeatureSettings, tasks: list[ModelTask], batch_rows: int
) -> tuple[int, list[dict[str, Any]]]:
    stream = io.StringIO()
    rows = score_slice(settings, DAY, tasks, batch_rows, SCORED_AT, Reporter(stream))
    return rows, [json.loads(line) for line in stream.getvalue().splitlines()]


def _models() -> dict[str, Callable[[Any], Any]]:
    def linear(frame: Any) -> Any:
        assert str(frame["kind"].dtype) == "object"  # dictionary columns arrive decoded
        return frame["x"].to_numpy() * 2 + frame["y"].to_numpy()

    def column_major(a: Any) -> Any:
        assert a.flags["F_CONTIGUOUS"] and a.dtype == np.float64
        return a[:, 0] - a[:, 1]

    def breaks(frame: Any) -> Any:
        if int(frame["x"].count()) > 400:
            raise RuntimeError("drifted")
        return np.zeros(len(frame))

    return {"linear": linear, "column_major": column_major, "breaks": breaks}


def test_files_row_groups_and_failures(tmp_path: Path) -> None:
    """Several files of small row groups; one model fails alone; scores equal a whole-day call."""
    parts = [_slice(0, 1500), _slice(1500, 700), _slice(2200, 0)]
    settings = _features(tmp_path / "features", parts, row_group_size=300)
    fns = _models()
    tasks = [
        _task(tmp_path, 1, fns["linear"], ["x", "y", "kind"]),
        _task(tmp_path, 2, fns["column_major"], ["y", "x"], "numpy"),
        _task(tmp_path, 3, fns["breaks"], ["x"]),
    ]
    rows, events = _run(settings, tasks, batch_rows=1000)
    assert rows == 2200
    day = pa.concat_tables([p.cast(parts[0].schema) for p in parts]).to_pandas()
    got = pq.read_table(Path(tasks[0].out_dir, PART_FILE)).to_pandas()
    assert np.array_equal(got["entity_id"], day["entity_id"])
    assert np.array_equal(got["score"], day["x"].to_numpy() * 2 + day["y"].to_numpy())
    got2 = pq.read_table(Path(tasks[1].out_dir, PART_FILE)).column("score").to_numpy()
    assert np.array_equal(got2, day["y"].to_numpy() - day["x"].to_numpy())
    assert not Path(tasks[2].out_dir, PART_FILE).exists()  # the failed model left no file
    finished = {e["model_run_id"]: e["rows"] for e in events if e["event"] == "finished"}
    assert finished == {1: 2200, 2: 2200}
    failed = [e for e in events if e["event"] == "failed"]
    assert [e["model_run_id"] for e in failed] == [3] and "drifted" in failed[0]["error"]
    # Every model's code runs between its "start" and the next "done"/"failed" of that model.
    current = None
    for e in events:
        if e["event"] == "start":
            assert current is None, e
            current = e["model_run_id"]
        elif e["event"] in ("done", "failed"):
            assert current == e["model_run_id"], e
            current = None
    assert current is None


def test_empty_slice_writes_empty_partitions(tmp_path: Path) -> None:
    settings = _features(tmp_path / "features", [_slice(0, 0)], row_group_size=100)
    task = _task(tmp_path, 1, _models()["linear"], ["x", "y", "kind"])
    rows, events = _run(settings, [task], batch_rows=100)
    assert rows == 0 and [e["event"] for e in events][-1] == "finished"
    table = pq.read_table(Path(task.out_dir, PART_FILE))
    assert table.num_rows == 0 and table.schema.names[:2] == ["entity_id", "score"]


def test_reader_error_stops_the_pass(tmp_path: Path) -> None:
    """A file lacking a column fails the pass outside any model, without hanging a thread."""
    good, bad = _slice(0, 500), _slice(500, 500).drop_columns(["y"])
    settings = _features(tmp_path / "features", [good, bad], row_group_size=100)
    task = _task(tmp_path, 1, _models()["linear"], ["x", "y", "kind"])
    with pytest.raises(Exception, match="y"):
        _run(settings, [task], batch_rows=200)


def test_full_batches_across_row_groups_and_files(tmp_path: Path) -> None:
    """Batches hold exactly batch_rows rows (the last one fewer), whatever the row groups."""
    parts = [_slice(0, 1500), _slice(1500, 700)]
    settings = _features(tmp_path / "features", parts, row_group_size=300)

    def batch_size(frame: Any) -> Any:
        return np.full(len(frame), float(len(frame)))

    task = _task(tmp_path, 1, batch_size, ["x"])
    rows, events = _run(settings, [task], batch_rows=1000)
    assert rows == 2200
    got = pq.read_table(Path(task.out_dir, PART_FILE)).column("score").to_numpy()
    assert got.tolist() == [1000.0] * 2000 + [200.0] * 200
    done = [e["batch"] for e in events if e["event"] == "done" and e.get("step") == "score"]
    assert done == [0, 1, 2]
