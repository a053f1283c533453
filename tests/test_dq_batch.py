"""The DQ of a batch: one sample per slice for all its models, each slice read at most once."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mldropd.dq.sample as sample_module
from mldropd.batch.quality import (
    BatchQuality,
    ModelScores,
    QualityResult,
    check_batch,
    current_samples,
)
from mldropd.batch.write import partition_dir
from mldropd.dq.evaluate import FIRST_DATE
from mldropd.dq.sample import SampleStore, sample_slice
from mldropd.engines.local_io import read_batches
from mldropd.features import FeatureSource
from mldropd.settings import DQSettings, FeatureSettings

REF_DAY = dt.date(2026, 3, 1)
DAY = dt.date(2026, 3, 2)
ROWS = 3_000
FEATURES = [f"f{i}" for i in range(6)]


def write_slice(root: Path, day: dt.date, shift: float, seed: int) -> pa.Table:
    """The feature slice of a day: the same entities every day, f1 moved by `shift`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(ROWS, len(FEATURES)))
    x[:, 1] += shift
    table = pa.table(
        {"entity_id": np.arange(ROWS) * 11} | {f: x[:, i] for i, f in enumerate(FEATURES)}
    )
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet", row_group_size=700)
    return table


def write_scores(folder: Path, table: pa.Table, features: list[str]) -> None:
    """A scores partition as the engine writes it (key and score are what DQ reads)."""
    x = np.column_stack([table.column(f).to_numpy() for f in features])
    score = 1 / (1 + np.exp(-x.sum(axis=1)))
    folder.mkdir(parents=True)
    pq.write_table(
        pa.table({"entity_id": table.column("entity_id"), "score": score}),
        folder / "part-0.parquet",
    )


@pytest.fixture
def batch(tmp_path: Path) -> dict[str, Any]:
    """Two days of features, three models scored on both, a fourth scored for the first time."""
    root, scores = tmp_path / "features", tmp_path / "scores"
    ref, cur = write_slice(root, REF_DAY, 0.0, 1), write_slice(root, DAY, 1.5, 2)
    subsets = [FEATURES[:3], FEATURES[1:5], FEATURES[3:], FEATURES[:2]]
    models = []
    for i, features in enumerate(subsets, start=1):
        if i < 4:
            write_scores(partition_dir(scores, REF_DAY, i), ref, features)
        staged = tmp_path / "staged" / f"model-run-{i}"
        write_scores(staged, cur, features)
        models.append(ModelScores(100 + i, i, features, "entity_id", staged, True, ROWS))
    source = FeatureSource(FeatureSettings(path=str(root)))
    return {"source": source, "scores": scores, "models": models, "current": cur}


def count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[dt.date]:
    """Count the real reads of feature slices by the DQ samples, per slice date."""
    reads: Counter[dt.date] = Counter()

    def counting(settings: FeatureSettings, day: dt.date, *args: Any) -> Iterator[pa.RecordBatch]:
        reads[day] += 1
        return read_batches(settings, day, *args)

    monkeypatch.setattr(sample_module, "read_batches", counting)
    return reads


def run(batch: dict[str, Any], **kwargs: Any) -> BatchQuality:
    return check_batch(
        batch["source"],
        batch["scores"],
        day=DAY,
        slice_date=DAY,
        models=batch["models"],
        settings=DQSettings(av_max_rows=1_000),
        **kwargs,
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_batch_reads_each_slice_once(
    batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    reads = count_reads(monkeypatch)
    out = run(batch, workers=workers)
    assert reads == {DAY: 1, REF_DAY: 1}  # not once per model and side
    assert sorted(out.slices_read) == [REF_DAY, DAY]
    results = [out.results[101 + i] for i in range(4)]
    assert all(isinstance(r, QualityResult) for r in results)
    for r in results[:3]:
        assert isinstance(r, QualityResult) and r.reference_date == REF_DAY
        assert r.report.auc is not None and r.report.details["av"]["n_cur"] == 1_000
    # Models that use the moved feature f1 see it; the one without f1 does not.
    moved = [isinstance(r, QualityResult) and (r.report.auc or 0) > 0.75 for r in results[:3]]
    assert moved == [True, True, False]
    first = results[3]
    assert isinstance(first, QualityResult) and first.report.reason == FIRST_DATE


def test_the_scoring_reads_sample_leaves_only_the_reference_slice(
    batch: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    collectors = current_samples(batch["models"], 1_000)
    for record_batch in batch["current"].to_batches(max_chunksize=999):  # the scoring read
        for collector in collectors.values():
            collector.add(record_batch)
    reads = count_reads(monkeypatch)
    out = run(batch, current={k: c.table() for k, c in collectors.items()})
    assert reads == {REF_DAY: 1}
    again = run(batch)  # the same samples drawn by check_batch itself: the same reports
    for i in range(101, 105):
        mine, theirs = out.results[i], again.results[i]
        assert isinstance(mine, QualityResult) and isinstance(theirs, QualityResult)
        origins = (
            mine.report.details.pop("samples", None),
            theirs.report.details.pop("samples", None),
        )
        assert mine.report == theirs.report
        if i < 104:  # a first date has no sample
            assert origins[0] == origins[1] | {"current": "drawn during the scoring read"}


def test_a_reference_day_without_features_compares_scores_alone(
    batch: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = dt.date(2026, 2, 1)  # scored once, its slice long gone (beyond max staleness)
    model = batch["models"][3]
    write_scores(
        partition_dir(batch["scores"], old, model.model_id), batch["current"], FEATURES[:2]
    )
    reads = count_reads(monkeypatch)
    out = run(batch)
    assert reads == {DAY: 1, REF_DAY: 1}
    result = out.results[model.model_run_id]
    assert isinstance(result, QualityResult) and result.reference_date == old
    assert result.report.details["av"]["columns"] == ["score"]
    assert result.report.auc is not None


def test_a_failed_sample_fails_the_dq_of_its_models_only(
    batch: dict[str, Any], tmp_path: Path
) -> None:
    for part in (tmp_path / "features" / f"dt={REF_DAY.isoformat()}").glob("*.parquet"):
        part.write_bytes(b"not parquet")
    out = run(batch)
    assert all(isinstance(out.results[i], Exception) for i in (101, 102, 103))
    assert isinstance(out.results[104], QualityResult)  # first date: needs no sample


def score_reference_day(batch: dict[str, Any], store: SampleStore) -> None:
    """The previous day's batch: its scoring read collects the sample, check_batch keeps it."""
    collectors = current_samples(batch["models"], 1_000)
    for record_batch in read_batches(
        batch["source"].settings, REF_DAY, ["entity_id", *FEATURES], 999
    ):
        for collector in collectors.values():
            collector.add(record_batch)
    check_batch(
        batch["source"],
        batch["scores"],
        day=REF_DAY,
        slice_date=REF_DAY,
        models=[],  # its models' DQ is not what this test looks at
        settings=DQSettings(av_max_rows=1_000),
        current={k: c.table() for k, c in collectors.items()},
        store=store,
    )


def test_the_reference_sample_kept_at_its_scoring_spares_a_read(
    batch: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SampleStore(tmp_path / "dq-samples", keep_days=7)
    score_reference_day(batch, store)
    kept = store.load(REF_DAY, "entity_id", FEATURES, 1_000)
    assert kept is not None
    assert kept.equals(sample_slice(batch["source"], REF_DAY, "entity_id", FEATURES, 1_000))
    reads = count_reads(monkeypatch)
    out = run(batch, store=store)
    assert reads == {DAY: 1}  # the reference slice is not read again
    assert out.slices_stored == [REF_DAY] and out.slices_read == [DAY]
    assert store.load(DAY, "entity_id", FEATURES, 1_000) is not None  # kept for tomorrow
    without = run(batch)  # the same samples drawn by reading both slices: the same figures
    for i in range(101, 105):
        mine, theirs = out.results[i], without.results[i]
        assert isinstance(mine, QualityResult) and isinstance(theirs, QualityResult)
        assert mine.report.auc == theirs.report.auc and mine.report.psi == theirs.report.psi
        assert mine.report.reason == theirs.report.reason
        if i < 104:  # the record says where each side's rows came from
            assert mine.report.details["samples"] == {
                "current": f"drawn by reading the {DAY} slice",
                "reference": f"kept when the {REF_DAY} slice was scored",
            }
            assert theirs.report.details["samples"]["reference"] == (
                f"drawn by reading the {REF_DAY} slice"
            )


@pytest.mark.parametrize("mismatch", ["columns", "max_rows", "damaged"])
def test_a_kept_sample_that_does_not_fit_is_drawn_again(
    batch: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mismatch: str
) -> None:
    store = SampleStore(tmp_path / "dq-samples", keep_days=7)
    columns = FEATURES[:2] if mismatch == "columns" else FEATURES  # models use f0-f5
    rows = 500 if mismatch == "max_rows" else 1_000
    store.save(
        REF_DAY,
        "entity_id",
        sample_slice(batch["source"], REF_DAY, "entity_id", columns, rows),
        rows,
    )
    if mismatch == "damaged":
        store.path(REF_DAY, "entity_id").write_bytes(b"not arrow")
    reads = count_reads(monkeypatch)
    out = run(batch, store=store)
    assert reads == {DAY: 1, REF_DAY: 1}
    assert out.slices_stored == []
    assert all(isinstance(out.results[i], QualityResult) for i in range(101, 105))


def test_samples_of_old_slices_are_removed(tmp_path: Path) -> None:
    store = SampleStore(tmp_path, keep_days=2)
    sample = pa.table({"entity_id": [1, 2], "f0": [0.5, 0.25]})
    for day in (dt.date(2026, 3, d) for d in (1, 2, 3, 4)):
        store.save(day, "entity_id", sample, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "dt=2026-03-02",
        "dt=2026-03-03",
        "dt=2026-03-04",
    ]
    assert store.load(dt.date(2026, 3, 4), "entity_id", ["f0"], 2) == sample
    assert store.load(dt.date(2026, 3, 4), "other_key", ["f0"], 2) is None
    assert "entity_id" not in str(store.path(dt.date(2026, 3, 4), "entity_id"))  # no user text


@pytest.mark.slow  # a benchmark run, as in tests/test_bench_smoke.py (tens of seconds)
def test_dq_bench_tiny(tmp_path: Path) -> None:
    from bench import dq as bench_dq

    out = tmp_path / "dq.json"
    result = bench_dq.main(
        ["--rows", "3000", "--features", "6", "--models", "2", "--lgbm", "1"]
        + ["--batch-rows", "1000", "--max-rows", "1000", "--repeat", "1", "--out", str(out)]
    )
    assert out.exists() and result["batch_before_s"] > 0 and result["raw_sum_s"] > 0
    after = result["after"]
    assert all(auc is not None for auc in result["auc_before"] + after["batch-1"]["auc"])
    # Neither threads nor where the samples come from change an AUC.
    assert after["batch-2"]["auc"] == after["read-2"]["auc"] == after["batch-1"]["auc"]
