"""Null and duplicated entity keys: refused by default, or one row per entity under every
policy, from pandas-, polars- and DuckDB-written stores (Spark: tests/test_spark.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from mldropd import save_model
from mldropd.auth import create_user
from mldropd.batch.keys import KeyFilter, KeyOrderError, check_keys
from mldropd.batch.plan import plan_batch
from mldropd.batch.run import BatchJob
from mldropd.batch.write import partition_dir
from mldropd.db import init_db, make_engine, session_scope
from mldropd.features import FeatureSource
from mldropd.intake import UploadForm, register_file
from mldropd.records import Model, ModelRun, OutboxMessage
from mldropd.settings import Settings, load_settings
from mldropd.states import Trigger
from mldropd.store import make_store
from tests import field_data
from tests.conftest import today

DAYS = [today() - dt.timedelta(days=1), today()]


def f00_model() -> Callable[[Any], Any]:
    """Scores each row with its f00, so a score tells which of a key's rows was scored."""

    def score(frame: Any) -> Any:
        return frame["f00"].to_numpy()

    return score


@dataclass
class Lab:
    settings: Settings
    db: Engine
    model_id: int

    def run(self, day: dt.date, **features: str) -> ModelRun:
        settings = Settings.from_dict(self.settings.to_dict())
        for key, value in features.items():
            setattr(settings.features, key, value)
        with session_scope(self.db) as s:
            model = s.get(Model, self.model_id)
            batch, covered = plan_batch(s, day, Trigger.MANUAL, [model], force=True)  # type: ignore[list-item]
            assert batch is not None and batch.id is not None
            batch_id, run_id = batch.id, covered[self.model_id].id
        BatchJob(settings, batch_id, engine=self.db, retries=False).execute()
        with session_scope(self.db) as s:
            run = s.get(ModelRun, run_id)
            assert run is not None
            s.expunge(run)
        return run

    def scores(self, day: dt.date) -> pa.Table:
        return pq.read_table(partition_dir(self.settings.scores.path, day, self.model_id))


def make_lab(home: Path, features: str) -> Lab:
    (home / "config.toml").write_text(
        f"[features]\n{features}\n[engine]\nbatch_rows = 1000\nvalidate_sample_rows = 200\n"
        "[dq]\nav_max_rows = 500\n"
    )
    settings = load_settings(home / "config.toml", env={})
    db = make_engine(settings.database.path)
    init_db(db)
    user = create_user(db, "ann@example.com")[0]
    path = save_model(home / "f00.dill", pipeline=f00_model(), features=["f00"], name="f00")
    model, _ = register_file(
        db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
    )
    assert model.id is not None
    return Lab(settings, db, model.id)


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
