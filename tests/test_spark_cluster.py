"""The Spark engine on a REAL standalone cluster: a master and a worker started from pyspark's
own spark-class on 127.0.0.1 (not local[N]); the batch job runs as its own process, as under
spark-submit or the daemon. Models of two owners score bit-identically with the local engine;
a worker failure keeps its root cause. About 90-120 s on 2 cores (cluster start ~10 s, two
Spark sessions ~15 s each, the local batch, the model uploads).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlmodel import select

from mldropd.auth import create_user
from mldropd.batch.plan import plan_batch
from mldropd.batch.run import BatchJob
from mldropd.batch.write import partition_dir
from mldropd.db import init_db, make_engine, session_scope
from mldropd.demo import write_features
from mldropd.intake import UploadForm, register_file
from mldropd.records import Model, ModelRun
from mldropd.settings import Settings, load_settings
from mldropd.states import Trigger
from mldropd.store import make_store
from tests.support.home import N_ENTITIES, N_FEATURES, today
from tests.support.wait import free_port, wait_for

# Two Spark sessions and a cluster start: far above the suite's 300 s default when the
# machine's 2 cores are shared.
pytestmark = [pytest.mark.spark, pytest.mark.spark_cluster, pytest.mark.timeout(900)]

# Executors must not find mldropd by accident: no PYSPARK_PYTHON anywhere but where mldropd
# puts it, so the test fails if [engine] spark_python is not passed on.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "SPARK_HOME")}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    work = tmp_path_factory.mktemp("spark-cluster")
    env = {**CLEAN_ENV, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(work)}
    port = free_port()
    procs = []
    log = open(work / "cluster.log", "wb")  # noqa: SIM115  (closed below)
    try:
        procs.append(
            subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(free_port())],
                stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0,
            )
        )  # fmt: skip
        wait_for(
            lambda: _listening(port) and b"New state: ALIVE" in (work / "cluster.log").read_bytes(),
            timeout=180,
            what="the Spark master",
        )
        procs.append(
            subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker",
                 f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--cores", "2",
                 "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(work)],
                stdout=log, stderr=subprocess.STDOUT, env=env, process_group=0,
            )
        )  # fmt: skip
        wait_for(
            lambda: b"Registering worker" in (work / "cluster.log").read_bytes(),
            timeout=180,
            what="the Spark worker to register",
        )
        yield f"spark://127.0.0.1:{port}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        log.close()


def _batch(settings: Settings, day: dt.date, ids: list[int]) -> int:
    db = make_engine(settings.database.path)
    with session_scope(db) as s:
        models = [s.get(Model, i) for i in ids]
        batch, _ = plan_batch(s, day, Trigger.MANUAL, models, force=True)  # type: ignore[arg-type]
        assert batch is not None and batch.id is not None
        return batch.id


def _runs(settings: Settings, batch_id: int) -> dict[int, ModelRun]:
    with session_scope(make_engine(settings.database.path)) as s:
        rows = s.exec(select(ModelRun).where(ModelRun.batch_id == batch_id)).all()
        for r in rows:
            s.expunge(r)
    return {r.model_id: r for r in rows}


def _job(settings: Settings, batch_id: int, tmp: Path) -> subprocess.CompletedProcess[str]:
    path = tmp / f"settings-{batch_id}.json"
    path.write_text(json.dumps(settings.to_dict()))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mldropd.jobs.score_batch",
            str(path),
            str(batch_id),
            "--no-retries",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=CLEAN_ENV,
        cwd=tmp,
    )


def test_standalone_cluster_scores_two_owners_bit_identically(
    cluster: str, tmp_path: Path, model_files: dict[str, Path]
) -> None:
    day = today()
    write_features(tmp_path / "features", [day - dt.timedelta(days=1), day], N_ENTITIES, N_FEATURES)
    (tmp_path / "config.toml").write_text(
        '[features]\npath = "features"\n[engine]\nbatch_rows = 1000\nvalidate_sample_rows = 300\n'
        "[dq]\nav_max_rows = 1000\n"
    )
    settings = load_settings(tmp_path / "config.toml", env={})
    db = make_engine(settings.database.path)
    init_db(db)
    ids = []
    for email, name in (("ann@example.com", "lgbm"), ("bob@example.com", "logreg")):
        user = create_user(db, email)[0]
        path = model_files[name]
        model, _ = register_file(
            db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
        )
        assert model.id is not None
        ids.append(model.id)
    local_batch = _batch(settings, day, ids)
    BatchJob(settings, local_batch, engine=db, retries=False).execute()
    local = {
        i: pq.read_table(partition_dir(settings.scores.path, day, i)).sort_by("entity_id")
        for i in ids
    }
    assert all(r.status == "succeeded" for r in _runs(settings, local_batch).values())

    on_cluster = Settings.from_dict(settings.to_dict())
    on_cluster.engine.default = "spark"
    on_cluster.engine.spark_master = cluster
    on_cluster.engine.spark_conf = {"spark.ui.enabled": "false", "spark.executor.memory": "1g"}
    batch = _batch(settings, day, ids)
    job = _job(on_cluster, batch, tmp_path)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-3000:]
    assert "scoring with the spark engine (requested by [engine] default)" in output
    assert "FileNotFoundException" not in output  # a successful run logs no stack trace
    runs = _runs(settings, batch)
    for model_id in ids:
        run = runs[model_id]
        assert run.status == "succeeded" and run.rows == N_ENTITIES, run.error
        got = pq.read_table(partition_dir(settings.scores.path, day, model_id)).sort_by("entity_id")
        assert np.array_equal(got["entity_id"].to_numpy(), local[model_id]["entity_id"].to_numpy())
        assert np.array_equal(got["score"].to_numpy(), local[model_id]["score"].to_numpy())
        assert set(got["run_id"].to_pylist()) == {run.id}

    # Executors on a Python without mldropd: the run record keeps the worker's root cause.
    broken = Settings.from_dict(on_cluster.to_dict())
    broken.engine.spark_python = "/usr/bin/python3"
    failing = _batch(settings, day, ids[:1])
    assert _job(broken, failing, tmp_path).returncode == 0
    error = _runs(settings, failing)[ids[0]].error or ""
    assert "the Spark job failed" in error
    assert "No module named" in error, error  # the cause, not only "thrown from the worker"
