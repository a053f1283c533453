"""The local engine: trusted reader and writer threads, one sandboxed host per owner."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldropd import save_model
from mldropd.engines.base import ModelTask, Outcome, ScoringRequest
from mldropd.engines.local import LocalEngine
from mldropd.engines.local_io import PART_FILE
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
    owner: int = 1,
    timeout_s: float = 60.0,
) -> ModelTask:
    path = save_model(
        tmp / f"m{run_id}.dill", pipeline=fn, features=features, name=f"m{run_id}", input=input_kind
    )
    return ModelTask(
        model_run_id=run_id,
        model_id=run_id,
        model_version=1,
        owner_id=owner,
        path=Path(path),
        features=tuple(features),
        input=input_kind,
        call="callable",
        output="predict",
        entity_key="entity_id",
        out_dir=tmp / f"out-{run_id}",
        timeout_s=timeout_s,
    )


def _run(
    sandboxes: Any, settings: FeatureSettings, tasks: list[ModelTask], batch_rows: int
) -> dict[int, Outcome]:
    request = ScoringRequest(settings, DAY, batch_rows, SCORED_AT, tuple(tasks))
    seen: list[dict[int, int]] = []
    engine = LocalEngine(sandboxes, memory_mb=4096)
    outcomes = engine.score(request, heartbeat=lambda: None, progress=lambda _p, r: seen.append(r))
    for before, after in zip(seen, seen[1:], strict=False):
        assert all(before[k] <= after.get(k, before[k]) for k in before), "rows only ever grow"
    return outcomes


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


def test_files_row_groups_and_failures(tmp_path: Path, sandboxes: Any) -> None:
    """Several files of small row groups; one model fails alone; scores equal a whole-day call."""
    parts = [_slice(0, 1500), _slice(1500, 700), _slice(2200, 0)]
    settings = _features(tmp_path / "features", parts, row_group_size=300)
    fns = _models()
    tasks = [
        _task(tmp_path, 1, fns["linear"], ["x", "y", "kind"]),
        _task(tmp_path, 2, fns["column_major"], ["y", "x"], "numpy", owner=2),
        _task(tmp_path, 3, fns["breaks"], ["x"]),
    ]
    outcomes = _run(sandboxes, settings, tasks, batch_rows=1000)
    day = pa.concat_tables([p.cast(parts[0].schema) for p in parts]).to_pandas()
    got = pq.read_table(Path(tasks[0].out_dir, PART_FILE)).to_pandas()
    assert np.array_equal(got["entity_id"], day["entity_id"])
    assert np.array_equal(got["score"], day["x"].to_numpy() * 2 + day["y"].to_numpy())
    got2 = pq.read_table(Path(tasks[1].out_dir, PART_FILE)).column("score").to_numpy()
    assert np.array_equal(got2, day["y"].to_numpy() - day["x"].to_numpy())
    assert not Path(tasks[2].out_dir, PART_FILE).exists()  # the failed model left no file
    assert {k: o.rows for k, o in outcomes.items() if o.ok} == {1: 2200, 2: 2200}
    assert "scoring batch 0 (1000 rows) failed: RuntimeError: drifted" in str(outcomes[3].error)


def test_empty_slice_writes_empty_partitions(tmp_path: Path, sandboxes: Any) -> None:
    settings = _features(tmp_path / "features", [_slice(0, 0)], row_group_size=100)
    task = _task(tmp_path, 1, _models()["linear"], ["x", "y", "kind"])
    outcomes = _run(sandboxes, settings, [task], batch_rows=100)
    assert outcomes[1].ok and outcomes[1].rows == 0
    table = pq.read_table(Path(task.out_dir, PART_FILE))
    assert table.num_rows == 0 and table.schema.names[:2] == ["entity_id", "score"]


def test_reader_error_stops_the_pass(tmp_path: Path, sandboxes: Any) -> None:
    """A file lacking a column fails the pass outside any model, without hanging a thread."""
    good, bad = _slice(0, 500), _slice(500, 500).drop_columns(["y"])
    settings = _features(tmp_path / "features", [good, bad], row_group_size=100)
    task = _task(tmp_path, 1, _models()["linear"], ["x", "y", "kind"])
    with pytest.raises(Exception, match="y"):
        _run(sandboxes, settings, [task], batch_rows=200)


def test_full_batches_across_row_groups_and_files(tmp_path: Path, sandboxes: Any) -> None:
    """Batches hold exactly batch_rows rows (the last one fewer), whatever the row groups."""
    parts = [_slice(0, 1500), _slice(1500, 700)]
    settings = _features(tmp_path / "features", parts, row_group_size=300)

    def batch_size(frame: Any) -> Any:
        return np.full(len(frame), float(len(frame)))

    task = _task(tmp_path, 1, batch_size, ["x"])
    outcomes = _run(sandboxes, settings, [task], batch_rows=1000)
    assert outcomes[1].rows == 2200
    got = pq.read_table(Path(task.out_dir, PART_FILE)).column("score").to_numpy()
    assert got.tolist() == [1000.0] * 2000 + [200.0] * 200


def test_pipelined_batches_survive_failures_and_a_host_crash(
    tmp_path: Path, sandboxes: Any
) -> None:
    """The host holds its next batch while it scores one; a model that raises on batch 1 and a
    model that kills the host on batch 3 fail alone, and every batch in flight at the crash is
    scored again by the new host for the others: their scores are whole and in order."""
    parts = [_slice(0, 2500)]
    settings = _features(tmp_path / "features", parts, row_group_size=500)

    def first(frame: Any) -> Any:
        return frame["x"].to_numpy() * 2 + frame["y"].to_numpy()

    def raises_on_batch_1(frame: Any) -> Any:
        if int(frame["entity_id"].iloc[0]) == 500:
            raise RuntimeError("late upstream value")
        return np.zeros(len(frame))

    def crashes_on_batch_3(frame: Any) -> Any:
        import os

        if int(frame["entity_id"].iloc[0]) == 1500:
            os._exit(3)
        return np.ones(len(frame))

    def last(frame: Any) -> Any:
        return frame["y"].to_numpy() - frame["x"].to_numpy()

    features = ["entity_id", "x", "y"]
    tasks = [
        _task(tmp_path, 1, first, features),
        _task(tmp_path, 2, raises_on_batch_1, features),
        _task(tmp_path, 3, crashes_on_batch_3, features),
        _task(tmp_path, 4, last, features),
    ]
    outcomes = _run(sandboxes, settings, tasks, batch_rows=500)
    day = parts[0].to_pandas()
    for task, expected in ((tasks[0], day["x"] * 2 + day["y"]), (tasks[3], day["y"] - day["x"])):
        got = pq.read_table(Path(task.out_dir, PART_FILE)).to_pandas()
        assert np.array_equal(got["entity_id"], day["entity_id"])
        assert np.array_equal(got["score"], expected.to_numpy())
    assert {k: o.rows for k, o in outcomes.items() if o.ok} == {1: 2500, 4: 2500}
    assert "scoring batch 1 (500 rows) failed: RuntimeError: late upstream value" in str(
        outcomes[2].error
    )
    assert "crashed its sandbox on batch 3" in str(outcomes[3].error)


def test_a_failed_model_is_not_run_on_the_batches_already_queued(
    tmp_path: Path, sandboxes: Any
) -> None:
    """A model that raises on batch 0 was also sent batch 1 (pipelined): the host skips it
    there, so its hang on batch 1 never holds up its owner's other model."""
    import time

    parts = [_slice(0, 2000)]
    settings = _features(tmp_path / "features", parts, row_group_size=500)

    def raises_then_hangs(frame: Any) -> Any:
        if int(frame["entity_id"].iloc[0]) == 0:
            raise RuntimeError("late upstream value")
        time.sleep(3600)
        return np.zeros(len(frame))

    def good(frame: Any) -> Any:
        return frame["x"].to_numpy() * 2

    features = ["entity_id", "x"]
    tasks = [
        _task(tmp_path, 1, raises_then_hangs, features, timeout_s=120),
        _task(tmp_path, 2, good, features),
    ]
    started = time.monotonic()
    outcomes = _run(sandboxes, settings, tasks, batch_rows=500)
    assert time.monotonic() - started < 60, "the other model waited out the failed one's limit"
    assert "scoring batch 0 (500 rows) failed: RuntimeError: late upstream value" in str(
        outcomes[1].error
    )
    assert outcomes[2].ok and outcomes[2].rows == 2000
