"""DQ samples: the rows with the smallest key hashes, whatever the batches, in bounded memory."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mldropd.dq.sample import KeySample, key_hash, sample_slice
from mldropd.features import FeatureSource
from mldropd.settings import FeatureSettings

DAY = dt.date(2026, 3, 2)


def slice_table(n: int, *, string_keys: bool = False, seed: int = 0) -> pa.Table:
    """n rows: a unique entity key, two float features and a string feature."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n).astype(np.int64) * 7 + 3
    keys = pa.array([f"cust-{i}" for i in ids]) if string_keys else pa.array(ids)
    return pa.table(
        {
            "entity_id": keys,
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "colour": rng.choice(["red", "green"], size=n),
        }
    )


def collect(table: pa.Table, sizes: list[int], max_rows: int) -> pa.Table:
    """Feed table to a KeySample in record batches of the given sizes (cycled)."""
    sample = KeySample("entity_id", ["a", "colour"], max_rows)
    start, i = 0, 0
    while start < table.num_rows:
        size = sizes[i % len(sizes)]
        for batch in table.slice(start, size).to_batches():
            sample.add(batch)
        start, i = start + size, i + 1
    return sample.table()


def brute_force(table: pa.Table, max_rows: int) -> pa.Table:
    """The definition: the max_rows rows of smallest hash, ordered by hash (unique keys)."""
    hashes = key_hash(table.column("entity_id"))
    order = np.argsort(hashes, kind="stable")[:max_rows]
    return table.select(["entity_id", "a", "colour"]).take(pa.array(order))


@pytest.mark.parametrize("string_keys", [False, True], ids=["int64 keys", "string keys"])
def test_same_rows_whatever_the_batch_boundaries(string_keys: bool) -> None:
    table = slice_table(20_000, string_keys=string_keys)
    expected = brute_force(table, 1_500)
    assert expected.num_rows == 1_500
    for sizes in ([20_000], [1_000], [7], [1, 333, 4_096], [3_001, 17]):
        assert collect(table, sizes, 1_500).equals(expected), sizes
    # The rule is about key values alone: the same slice in another row order gives the same.
    shuffled = table.take(pa.array(np.random.default_rng(5).permutation(table.num_rows)))
    assert collect(shuffled, [2_500], 1_500).equals(expected)


def test_int32_and_int64_keys_pick_the_same_entities() -> None:
    table = slice_table(5_000)
    narrow = table.set_column(0, "entity_id", table.column("entity_id").cast(pa.int32()))
    picked = collect(table, [999], 400).column("entity_id").to_pylist()
    assert collect(narrow, [999], 400).column("entity_id").to_pylist() == picked


@pytest.mark.parametrize("kind", ["large_string", "dictionary"])
def test_string_key_types_pick_the_same_entities(kind: str) -> None:
    table = slice_table(5_000, string_keys=True)
    keys = table.column("entity_id")
    other = keys.cast(pa.large_string()) if kind == "large_string" else keys.dictionary_encode()
    picked = collect(table, [999], 400).column("entity_id").to_pylist()
    again = collect(table.set_column(0, "entity_id", other), [999], 400)
    assert again.column("entity_id").to_pylist() == picked


def test_memory_stays_bounded_by_max_rows() -> None:
    table = slice_table(200_000)
    sample = KeySample("entity_id", ["a", "b", "colour"], max_rows=1_000)
    peak = 0
    for batch in table.to_batches(max_chunksize=5_000):
        sample.add(batch)
        peak = max(peak, sample.buffered_rows)
    assert sample.rows_seen == 200_000
    assert peak <= 2 * 1_000 + 5_000  # never more than twice the sample plus one batch
    assert sample.table().num_rows == 1_000


def test_duplicate_keys_at_the_cut_are_kept_or_dropped_together() -> None:
    table = slice_table(2_000)
    hashes = key_hash(table.column("entity_id"))
    order = np.argsort(hashes)
    # Repeat the entity that would be the 100th row of the sample: its group no longer fits.
    twice = table.take(pa.array([*range(table.num_rows), int(order[99])]))
    picked = collect(twice, [300], 100)
    assert picked.num_rows == 99
    assert set(picked.column("entity_id").to_pylist()) == set(
        table.column("entity_id").take(pa.array(order[:99])).to_pylist()
    )
    assert collect(twice, [7], 100).equals(picked)


def test_missing_columns_are_named() -> None:
    sample = KeySample("entity_id", ["a", "nope"], 10)
    with pytest.raises(ValueError, match="lacks nope"):
        sample.add(slice_table(20).to_batches()[0])


def test_an_empty_slice_gives_an_empty_sample_with_its_columns() -> None:
    sample = KeySample("entity_id", ["a"], 10)
    sample.add(slice_table(10).slice(0, 0))
    assert sample.table().num_rows == 0
    assert sample.table().column_names == ["entity_id", "a"]


def test_sample_slice_draws_the_same_sample_in_one_read(tmp_path: Path) -> None:
    table = slice_table(30_000)
    folder = tmp_path / "features" / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    # Two files with small row groups: the reader's batches cut across both.
    pq.write_table(table.slice(0, 12_345), folder / "part-0.parquet", row_group_size=4_000)
    pq.write_table(table.slice(12_345), folder / "part-1.parquet", row_group_size=3_000)
    source = FeatureSource(FeatureSettings(path=str(tmp_path / "features")))
    drawn = sample_slice(source, DAY, "entity_id", ["a", "colour"], 2_000)
    assert drawn.equals(brute_force(table, 2_000))
