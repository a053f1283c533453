"""The Spark engine (local[2]): parity with the local engine, failures alone, reruns, spark-submit.

One Spark session for the module; the batch jobs run in this process, so the engine's
getOrCreate() finds that session, exactly as it finds spark-submit's on a cluster.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from mldropd import save_model
from mldropd.auth import create_user
from mldropd.batch.plan import plan_batch
from mldropd.batch.run import BatchJob
from mldropd.batch.write import partition_dir
from mldropd.db import init_db, make_engine, session_scope
from mldropd.demo import write_features
from mldropd.errors import ConfigError
from mldropd.intake import UploadForm, register_file
from mldropd.records import DQResult, Model, ModelRun, User
from mldropd.settings import Settings, load_settings
from mldropd.states import RunStatus, Trigger
from mldropd.store import make_store
from tests.support.home import N_ENTITIES, N_FEATURES, today

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """\
[features]
path = "features"
[engine]
batch_rows = 1000
spark_master = "local[2]"
validate_timeout_s = 90
validate_sample_rows = 500
model_memory_mb = 4096
[dq]
av_max_rows = 2000
"""


def _callables() -> dict[str, Callable[[Any], Any]]:
    """Notebook-style callables (built in a function so dill stores them by value)."""
    weights = np.linspace(-1.0, 1.0, 6)

    def numpy_logit(x: Any) -> Any:  # input = numpy: a float64 matrix
        return 1.0 / (1.0 + np.exp(-(x @ weights)))

    def raises(frame: Any) -> Any:
        if len(frame) > 500:
            raise RuntimeError("feature store schema drifted")
        return np.full(len(frame), 0.5)

    def hangs(frame: Any) -> Any:
        import time

        if len(frame) > 500:
            time.sleep(3600)
        return np.full(len(frame), 0.5)

    def threads(frame: Any) -> Any:  # scores with the BLAS threads its sandbox was given
        import os

        return np.full(len(frame), float(os.environ["OMP_NUM_THREADS"]))

    return {"numpy_logit": numpy_logit, "raises": raises, "hangs": hangs, "threads": threads}


@dataclass
class Lab:
    """A home with features of three days and registered models (name -> id)."""

    settings: Settings
    db: Engine
    ids: dict[str, int]
    days: list[dt.date]

    def run(self, day: dt.date, names: list[str], engine: str = "spark", **cfg: Any) -> int:
        """Plan one forced batch of the named models and run it here; return the batch id."""
        batch_id = self.plan(day, names)
        BatchJob(self.with_engine(engine, **cfg), batch_id, engine=self.db, retries=False).execute()
        return batch_id

    def with_engine(self, engine: str, **cfg: Any) -> Settings:
        """A copy of the settings with [engine] default = engine and section__key = value."""
        settings = Settings.from_dict(self.settings.to_dict())
        settings.engine.default = engine
        for key, value in cfg.items():
            section, _, name = key.partition("__")
            setattr(getattr(settings, section), name, value)
        return settings

    def plan(self, day: dt.date, names: list[str]) -> int:
        """Plan one forced batch of the named models; its id."""
        with session_scope(self.db) as s:
            models = [s.get(Model, self.ids[n]) for n in names]
            batch, _ = plan_batch(s, day, Trigger.MANUAL, models, force=True)  # type: ignore[arg-type]
            assert batch is not None and batch.id is not None
            return batch.id

    def runs(self, batch_id: int) -> dict[str, ModelRun]:
        names = {v: k for k, v in self.ids.items()}
        with session_scope(self.db) as s:
            rows = s.exec(select(ModelRun).where(ModelRun.batch_id == batch_id)).all()
            for r in rows:
                s.expunge(r)
        return {names[r.model_id]: r for r in rows}

    def dq(self, run_id: int) -> DQResult:
        with session_scope(self.db) as s:
            row = s.exec(select(DQResult).where(DQResult.model_run_id == run_id)).one()
            s.expunge(row)
        return row

    def scores(self, day: dt.date, name: str) -> pa.Table:
        part = partition_dir(self.settings.scores.path, day, self.ids[name])
        return pq.read_table(part).sort_by("entity_id")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]) -> Lab:
    home = tmp_path_factory.mktemp("spark-home")
    days = [today() - dt.timedelta(days=i) for i in range(3)][::-1]
    write_features(home / "features", days, N_ENTITIES, N_FEATURES)
    (home / "config.toml").write_text(CONFIG)
    settings = load_settings(home / "config.toml", env={})
    db = make_engine(settings.database.path)
    init_db(db)
    user: User = create_user(db, "ann@example.com")[0]
    paths = {"lgbm": model_files["lgbm"], "logreg": model_files["logreg"]}
    for name, fn in _callables().items():
        paths[name] = save_model(
            home / f"{name}.dill",
            pipeline=fn,
            features=[f"f{i:02d}" for i in range(6)],
            name=name,
            input="numpy" if name == "numpy_logit" else None,
            params={"timeout_s": 5} if name == "hangs" else None,
        )
    ids = {}
    for name, path in paths.items():
        model, _ = register_file(
            db, make_store(settings.storage), settings, user, path, UploadForm(path.name, name=name)
        )
        ids[name] = model.id
    return Lab(settings, db, ids, days)


def test_parity_with_the_local_engine(lab: Lab, spark: Any) -> None:
    names = ["lgbm", "logreg", "numpy_logit"]
    reference, day = lab.days[1], lab.days[2]
    assert all(
        r.status == "succeeded" for r in lab.runs(lab.run(reference, names, "local")).values()
    )
    local_runs = lab.runs(lab.run(day, names, "local"))
    local = {n: lab.scores(day, n) for n in names}
    local_schema = {
        n: pq.read_schema(
            next(partition_dir(lab.settings.scores.path, day, lab.ids[n]).glob("*.parquet"))
        )
        for n in names
    }
    spark_runs = lab.runs(lab.run(day, names, "spark"))
    for name in names:
        lr, sr = local_runs[name], spark_runs[name]
        assert lr.status == sr.status == "succeeded", (lr.error, sr.error)
        assert lr.rows == sr.rows == N_ENTITIES
        theirs = lab.scores(day, name)
        files = list(partition_dir(lab.settings.scores.path, day, lab.ids[name]).glob("*"))
        assert all(f.name.startswith("part-") and f.suffix == ".parquet" for f in files), files
        assert pq.read_schema(files[0]).equals(local_schema[name], check_metadata=False)
        assert theirs.num_rows == local[name].num_rows == N_ENTITIES
        assert np.array_equal(theirs["entity_id"].to_numpy(), local[name]["entity_id"].to_numpy())
        # Both engines feed each model the same Arrow batches through modelcall.to_input.
        assert np.array_equal(theirs["score"].to_numpy(), local[name]["score"].to_numpy()), name
        assert set(theirs["run_id"].to_pylist()) == {sr.id}
        ours, base = lab.dq(sr.id), lab.dq(lr.id)
        assert ours.reference_date == base.reference_date == reference
        assert (ours.psi, ours.psi_noise, ours.ks, ours.auc, ours.status) == (
            base.psi,
            base.psi_noise,
            base.ks,
            base.auc,
            base.status,
        )


def test_a_raising_or_hanging_model_fails_alone(lab: Lab, spark: Any) -> None:
    day = lab.days[2]
    runs = lab.runs(lab.run(day, ["logreg", "raises", "hangs"]))
    assert runs["logreg"].status == "succeeded" and runs["logreg"].rows == N_ENTITIES
    assert runs["raises"].status == "failed"
    assert "RuntimeError: feature store schema drifted" in runs["raises"].error
    assert "Spark partition" in runs["raises"].error and "(1000 rows)" in runs["raises"].error
    assert runs["hangs"].status == "failed"
    assert "did not finish within its time limit of 5 s" in runs["hangs"].error
    for name in ("raises", "hangs"):
        assert runs[name].rows is None
        assert not partition_dir(lab.settings.scores.path, day, lab.ids[name]).exists()


def test_rerun_replaces_and_auto_picks_spark_above_min_rows(
    lab: Lab, spark: Any, caplog: pytest.LogCaptureFixture
) -> None:
    day = lab.days[0]
    caplog.set_level(logging.INFO, logger="mldropd.batch.run")
    for _ in range(2):
        runs = lab.runs(lab.run(day, ["logreg"], "auto", engine__spark_min_rows=N_ENTITIES))
        assert runs["logreg"].status == "succeeded"
        part = partition_dir(lab.settings.scores.path, day, lab.ids["logreg"])
        table = pq.read_table(part)
        assert table.num_rows == N_ENTITIES
        assert len(set(table["entity_id"].to_pylist())) == N_ENTITIES  # no duplicates
        assert set(table["run_id"].to_pylist()) == {runs["logreg"].id}  # all of the new run
    assert (
        "scoring with the spark engine (auto: 3000 rows >= [engine] spark_min_rows" in caplog.text
    )
    lab.run(day, ["logreg"], "auto", engine__spark_min_rows=N_ENTITIES + 1)
    assert "scoring with the local engine (auto: 3000 rows < " in caplog.text


def test_a_backfills_dates_share_one_session(
    lab: Lab, spark: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """`mldropd run --from/--to` is one batch job (run_batches) for all its dates: their Spark
    batches get one session (the module's here, found once; in the job, started once)."""
    from mldropd.jobs.score_batch import run_batches

    caplog.set_level(logging.INFO, logger="mldropd.engines.spark")
    batch_ids = [lab.plan(day, ["logreg"]) for day in lab.days[:2]]
    statuses = run_batches(lab.with_engine("spark"), batch_ids, retries=False, engine=lab.db)
    assert set(statuses.values()) == {RunStatus.SUCCEEDED}
    sessions = [r for r in caplog.records if r.getMessage().startswith("spark session ")]
    assert len(sessions) == 1 and "found" in sessions[0].getMessage()
    assert len([r for r in caplog.records if r.getMessage().startswith("spark job:")]) == 2


def test_missing_pyspark_fails_the_model_runs_clearly(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mldropd.engines.pyspark_available", lambda: False)
    runs = lab.runs(lab.run(lab.days[2], ["logreg"], "spark"))
    assert runs["logreg"].status == "failed"
    assert "requested by [engine] default" in runs["logreg"].error
    assert "pyspark is not installed" in runs["logreg"].error


def test_spark_table_feature_source(lab: Lab, spark: Any, tmp_path: Path) -> None:
    day = lab.days[2]
    from_files = lab.runs(lab.run(day, ["logreg"], "spark"))["logreg"]
    expected = lab.scores(day, "logreg")
    location = tmp_path / "features_t"
    spark.read.parquet(lab.settings.features.path).write.partitionBy("dt").option(
        "path", str(location)
    ).saveAsTable("features_t")
    table = {"features__kind": "spark_table", "features__table": "features_t"}
    # kind = spark_table means Spark, whatever the engine setting says.
    run = lab.runs(lab.run(day, ["logreg"], "local", features__path=str(location), **table))[
        "logreg"
    ]
    assert run.status == "succeeded" and run.rows == N_ENTITIES, run.error
    got = lab.scores(day, "logreg")
    assert np.array_equal(got["score"].to_numpy(), expected["score"].to_numpy())
    ours, base = lab.dq(run.id), lab.dq(from_files.id)
    assert (ours.psi, ours.auc, ours.reference_date) == (base.psi, base.auc, base.reference_date)
    wrong = lab.runs(lab.run(day, ["logreg"], "spark", **table))["logreg"]  # path: other files
    assert wrong.status == "failed"
    assert "must be the location of table features_t" in wrong.error


def test_spark_submit_runs_a_batch(lab: Lab, spark: Any, tmp_path: Path) -> None:
    import pyspark

    day = lab.days[1]
    settings_file = tmp_path / "settings.json"
    settings_file.write_text(json.dumps(lab.settings.to_dict()))  # engine default: auto
    with session_scope(lab.db) as s:
        models = [s.get(Model, lab.ids["lgbm"]), s.get(Model, lab.ids["logreg"])]
        batch, _ = plan_batch(s, day, Trigger.MANUAL, models, force=True)  # type: ignore[arg-type]
        assert batch is not None
        batch_id = batch.id
    submit = Path(pyspark.__file__).parent / "bin" / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            str(ROOT / "jobs" / "score_batch.py"),
            str(settings_file),
            str(batch_id),
            "--no-retries",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr  # spark-submit relays the driver's stderr to stdout
    assert result.returncode == 0, output[-3000:]
    assert "scoring with the spark engine (auto, started by spark-submit)" in output
    runs = lab.runs(batch_id)
    assert {n: r.status for n, r in runs.items()} == {"lgbm": "succeeded", "logreg": "succeeded"}
    assert all(r.rows == N_ENTITIES for r in runs.values())
    assert lab.scores(day, "lgbm").num_rows == N_ENTITIES


def test_spark_conf_is_a_table_of_settings(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[engine]\nspark_conf = { "spark.sql.shuffle.partitions" = 4, "a.b" = true }\n'
    )
    assert load_settings(config, env={}).engine.spark_conf == {
        "spark.sql.shuffle.partitions": "4",
        "a.b": "true",
    }
    env = {"MLDROPD_ENGINE__SPARK_CONF": '{"spark.executor.memory": "4g"}'}
    assert load_settings(config, env=env).engine.spark_conf == {"spark.executor.memory": "4g"}
    with pytest.raises(ConfigError, match=r"\[engine\] spark_conf \(from environment\)"):
        load_settings(config, env={"MLDROPD_ENGINE__SPARK_CONF": "4g"})


@pytest.mark.parametrize("policy", ["first", "last"])
def test_keys_one_row_per_entity_on_a_spark_written_store(
    spark: Any, tmp_path: Path, policy: str
) -> None:
    """A store written by Spark (_SUCCESS, .crc, several part files), with duplicated and null
    keys: both engines keep the same row of each key, one row per entity."""
    from tests.support import field_data
    from tests.support.key_lab import make_lab

    day = today()
    data = field_data.frame(day)
    data["segment"] = data["segment"].astype(str)
    data["dt"] = day.isoformat()
    spark.createDataFrame(data).repartition(2).write.partitionBy("dt").parquet(
        str(tmp_path / "features")
    )
    folder = tmp_path / "features" / f"dt={day}"
    assert (tmp_path / "features" / "_SUCCESS").exists() and list(folder.glob(".*.crc"))
    files = sorted(folder.glob("*.parquet"))
    in_file_order = pa.concat_tables([pq.read_table(f) for f in files]).to_pandas()
    expected = field_data.expected_scores(in_file_order, policy)
    lab = make_lab(tmp_path, 'path = "features"')
    got = {}
    for engine in ("local", "spark"):
        lab.settings.engine.default = engine
        run = lab.run(day, duplicate_keys=policy, null_keys="drop")
        assert run.status == "succeeded" and run.rows == field_data.ROWS, (engine, run.error)
        table = lab.scores(day)
        keys = table["entity_id"].to_pylist()
        assert None not in keys and len(set(keys)) == len(keys) == field_data.ROWS, engine
        got[engine] = dict(zip(keys, table["score"].to_pylist(), strict=True))
    assert got["local"] == got["spark"] == expected


def test_executor_hosts_get_a_tasks_share_of_the_cores(lab: Lab, spark: Any) -> None:
    """[sandbox] threads = 0 means the machine's cores to the local engine's hosts, but a task's
    share (spark.task.cpus) in an executor, where tasks already run side by side."""
    day = lab.days[1]
    lab.run(day, ["threads"], engine="spark")
    assert set(lab.scores(day, "threads")["score"].to_pylist()) == {1.0}
    lab.run(day, ["threads"], engine="local")
    assert set(lab.scores(day, "threads")["score"].to_pylist()) == {float(os.cpu_count() or 1)}
