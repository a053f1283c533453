"""Null and duplicated entity keys: refused by default, or one row per entity under every
policy, from pandas-, polars- and DuckDB-written stores (Spark: tests/test_spark.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pytest
from sqlmodel import select

from mldropd.batch.keys import KeyFilter, KeyOrderError, check_keys
from mldropd.batch.write import partition_dir
from mldropd.db import session_scope
from mldropd.features import FeatureSource
from mldropd.records import OutboxMessage
from mldropd.settings import load_settings
from tests.support import field_data
from tests.support.home import today
from tests.support.key_lab import make_lab

DAYS = [today() - dt.timedelta(days=1), today()]


@pytest.mark.slow  # batches scored in sandboxed model hosts
def test_null_and_duplicated_keys_fail_by_default_naming_counts_and_examples(
    tmp_path: Path,
) -> None:
    field_data.write_pandas_hive(tmp_path / "features", DAYS)
    lab = make_lab(tmp_path, 'path = "features"')
    run = lab.run(DAYS[1])
    assert run.status == "failed"
    assert run.error is not None
    assert (
        "the feature slice" in run.error and "50 entity_id values occur more than once" in run.error
    )
    assert "(107 rows; e.g. 'C" in run.error  # 50 keys on 107 rows, three examples
    assert run.error.count("'C") == 3
    assert "10 rows have no entity_id (null)" in run.error
    assert '[features] duplicate_keys = "first" or "last"' in run.error
    assert '[features] null_keys = "drop"' in run.error
    assert run.key_check is not None and run.key_check["duplicated_keys"] == 50
    assert run.key_check["null_rows"] == 10 and len(run.key_check["examples"]) == 3
    assert not partition_dir(lab.settings.scores.path, DAYS[1], lab.model_id).exists()
    with session_scope(lab.db) as s:
        report = s.exec(select(OutboxMessage)).one()
    assert "50 entity_id values occur more than once" in report.body_text


STORES = {
    "pandas": (field_data.write_pandas_hive, 'path = "features"', {}),
    "polars": (field_data.write_polars_hive, 'path = "features"', {}),
    "duckdb-DATE": (
        lambda p, d: field_data.write_duckdb(p, d, "DATE", int_keys=True),
        'kind = "duckdb"\npath = "features.duckdb"',
        {"int_keys": True},
    ),
    "duckdb-VARCHAR": (
        lambda p, d: field_data.write_duckdb(p, d, "VARCHAR"),
        'kind = "duckdb"\npath = "features.duckdb"',
        {},
    ),
    "duckdb-TIMESTAMP": (
        lambda p, d: field_data.write_duckdb(p, d, "TIMESTAMP", int_keys=True),
        'kind = "duckdb"\npath = "features.duckdb"',
        {"int_keys": True},
    ),
}


@pytest.mark.parametrize(
    ("store", "policy"),
    [
        ("pandas", "first"),
        ("polars", "last"),
        ("duckdb-DATE", "first"),
        ("duckdb-VARCHAR", "last"),
        ("duckdb-TIMESTAMP", "last"),
    ],
)
@pytest.mark.slow  # batches scored in sandboxed model hosts
def test_one_row_per_entity_under_each_policy(tmp_path: Path, store: str, policy: str) -> None:
    write, features, kw = STORES[store]
    target = tmp_path / ("features.duckdb" if "duckdb" in store else "features")
    write(target, DAYS)
    lab = make_lab(tmp_path, features)
    run = lab.run(DAYS[1], duplicate_keys=policy, null_keys="drop")
    assert run.status == "succeeded", run.error
    expected = field_data.expected_scores(field_data.frame(DAYS[1], **kw), policy)
    assert run.rows == len(expected) == field_data.ROWS
    table = lab.scores(DAYS[1])
    keys = table["entity_id"].to_pylist()
    assert None not in keys and len(set(keys)) == len(keys) == field_data.ROWS
    got = dict(zip(keys, table["score"].to_pylist(), strict=True))
    assert got == expected  # each duplicated key scored from its first/last row in file order
    assert run.key_check is not None
    note = run.key_check["note"]
    assert f"the {policy} row of each in file order scored, 57 rows not scored" in note
    assert "10 rows without entity_id not scored" in note


def test_the_filter_holds_only_duplicated_keys_and_checks_the_order(tmp_path: Path) -> None:
    field_data.write_pandas_hive(tmp_path / "features", DAYS)
    source = FeatureSource(
        load_settings(
            None, env={}, overrides={"features": {"path": str(tmp_path / "features")}}
        ).features
    )
    check = check_keys(source, DAYS[1], "entity_id")
    assert (check.rows, check.null_rows, len(check.duplicates), check.duplicate_rows) == (
        field_data.ROWS + 57 + 10,
        10,
        50,
        57,
    )
    data = pa.Table.from_pandas(field_data.frame(DAYS[1]), preserve_index=False)
    batches = data.to_batches(max_chunksize=1000)
    in_order = KeyFilter("entity_id", check.keep_positions("last"), drop_nulls=True)
    assert len(in_order.keep) == 50  # the duplicated keys, never every key
    offset, kept = 0, 0
    for batch in batches:
        mask = in_order.mask(batch, offset)
        kept += batch.num_rows if mask is None else sum(mask.to_pylist())
        offset += batch.num_rows
    in_order.finish()
    assert kept == field_data.ROWS
    shuffled = KeyFilter("entity_id", check.keep_positions("last"), drop_nulls=True)
    with pytest.raises(KeyOrderError):
        offset = 0
        for batch in reversed(batches):  # another order than the check saw: refused, not guessed
            shuffled.mask(batch, offset)
            offset += batch.num_rows
        shuffled.finish()
