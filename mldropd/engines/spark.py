"""Spark engine: the batch's scoring pass as one Spark job over every due model.

Read the slice (its hive Parquet partition, or the catalog table for kind = spark_table), select
the entity key(s) and the union of the models' features, then one `mapInArrow` pass applies
EVERY model to each Arrow batch. The models' dill bytes are broadcast once; each Python worker
loads each model once (cached by model run id). `mapInArrow` is `mapInPandas`' Arrow twin: the
worker gets a pyarrow RecordBatch, exactly what the local engine streams, and
`mldropd.modelcall.to_input` turns it into the model's input, so both engines call a model with
identical input (and give bit-identical scores).

Scores do not travel back through the JVM: each task appends every model's scores to that
model's own Parquet file (the local engine's writer, so the columns and types are the same) in a
scratch folder beside the scores table, and the job's output is a small long-format report, one
row per task and model: (model_run_id, path, rows, error, seconds). A model with an error row
failed alone; only files named in the report (the successful task attempts) are renamed into the
model's staging folder, which publish() swaps into dt=D/model=M (dynamic partition overwrite:
idempotent, never a duplicate), and DQ reads it as for the local engine.

Runs in the batch job process (or under spark-submit), never in the daemon.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet  # noqa: F401  (pa.parquet: file row counts for key positions)

from mldropd.engines import preload_for, under_spark_submit
from mldropd.engines.base import Outcome, Progress, ScoringRequest
from mldropd.engines.local_io import open_scores_file
from mldropd.engines.spark_worker import REPORT_DDL, WorkerModel, score_partition
from mldropd.settings import EngineSettings, FeatureSettings, SandboxSettings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)


class SparkEngine:
    """The Spark engine behind the ScoringEngine interface; one session for the job's batches."""

    name = "spark"

    def __init__(self, engine: EngineSettings, sandbox: SandboxSettings) -> None:
        self.engine = engine
        self.sandbox = sandbox
        self.session: SparkSession | None = None
        self._owned = False  # we started it (not spark-submit's, not a test's)

    def close(self) -> None:
        """Stop the session if this engine started it (the JVM's temp files go with it)."""
        if self.session is not None and self._owned:
            self.session.stop()
        self.session = None

    def score(
        self,
        request: ScoringRequest,
        *,
        heartbeat: Callable[[], None],
        progress: Progress | None = None,
        observe: Callable[[Any], None] | None = None,
    ) -> dict[int, Outcome]:
        """The batch's one Spark job; meanwhile a thread here reads the slice for `observe` (the
        DQ sample, drawn during scoring as with the local engine, so DQ need not read it)."""
        if self.session is None:
            from pyspark import SparkContext

            started, fresh = time.monotonic(), SparkContext._active_spark_context is None
            self.session = get_session(self.engine)
            self._owned = fresh
            log.info(  # counted by the tests and bench.spark_vs_mlflow: one per session started
                "spark session %s in %.1f s (master %s)",
                "started" if fresh else "found",
                time.monotonic() - started,
                self.session.sparkContext.master,
            )
        if progress is not None:  # Spark reads and scores in one job: rows come at its end
            progress("scoring", {})
        legacy = {
            "features": dataclasses.asdict(request.features),
            "slice_date": request.slice_date.isoformat(),
            "batch_rows": request.batch_rows,
            "scored_at": request.scored_at.isoformat(),
            "models": [
                {
                    "model_run_id": t.model_run_id,
                    "model_id": t.model_id,
                    "model_version": t.model_version,
                    "owner_id": t.owner_id,
                    "path": str(t.path),
                    "features": list(t.features),
                    "input": t.input,
                    "call": t.call,
                    "output": t.output,
                    "entity_key": t.entity_key,
                    "out_dir": str(t.out_dir),
                }
                for t in request.tasks
            ],
            "key_filters": list(request.key_filters),
        }
        timeouts = {t.model_run_id: t.timeout_s for t in request.tasks}
        types = [t.pipeline_type for t in request.tasks]
        preload = preload_for(types, self.sandbox.preload)  # the executors' fork servers'
        sampler = _Sampler(request, observe) if observe is not None else None
        try:
            outcomes = score_with_spark(
                legacy,
                self.engine,
                timeouts=timeouts,
                spark=self.session,
                heartbeat=heartbeat,
                sandbox=dataclasses.asdict(self.sandbox) | {"preload": preload},
            )
        finally:
            if sampler is not None:
                sampler.join()
        if sampler is not None and sampler.error is not None:
            raise sampler.error  # a partial sample would be a wrong one
        return outcomes


class _Sampler(threading.Thread):
    """Reads the slice (the local engine's reader, the same batches) and hands each batch to
    observe, in the batch job while Spark's executors score it."""

    def __init__(self, request: ScoringRequest, observe: Callable[[Any], None]) -> None:
        super().__init__(name="spark-dq-sample", daemon=True)
        self.request, self.observe = request, observe
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        from mldropd.engines.local_io import read_batches

        r = self.request
        try:
            for batch in read_batches(r.features, r.slice_date, r.columns, r.batch_rows):
                self.observe(batch)
        except BaseException as exc:
            self.error = exc


def executor_python(engine: EngineSettings) -> str:
    """The Python Spark's executors run: [engine] spark_python, $PYSPARK_PYTHON, this one."""
    return engine.spark_python or os.environ.get("PYSPARK_PYTHON") or sys.executable


def get_session(engine: EngineSettings, app_name: str = "mldropd-batch") -> SparkSession:
    """The active session, else a new one on engine.spark_master with engine.spark_conf.

    PySpark reads the executors' Python from PYSPARK_PYTHON in the driver's environment when the
    context starts (spark.pyspark.python given to the builder is ignored), so it is set here for
    every master, also under spark-submit: executors of a standalone or YARN cluster otherwise
    start the `python3` on their PATH, which has no mldropd.
    """
    os.environ["PYSPARK_PYTHON"] = executor_python(engine)
    local = engine.spark_master.startswith("local")
    if local:  # stay on loopback
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(app_name)
    if not under_spark_submit():
        builder = builder.master(engine.spark_master)
    defaults = {"spark.ui.showConsoleProgress": "false"}
    if local:  # the sandbox's memory limit, applied by Spark to its Python workers
        defaults["spark.executor.pyspark.memory"] = f"{engine.model_memory_mb}m"
    for key, value in {**defaults, **engine.spark_conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def read_slice(spark: SparkSession, features: FeatureSettings, day: dt.date) -> DataFrame:
    """The feature slice of `day`: its hive partition folder, or the catalog table's rows."""
    from pyspark.sql import functions as F

    if features.kind == "spark_table":
        _check_location(spark, features)
        table = spark.table(features.table)
        return table.where(F.col(features.date_column).cast("date") == F.lit(day))
    if features.kind == "parquet":
        folder = Path(features.path) / f"{features.date_column}={day}"
        # The local engine's file set (*.parquet, not _SUCCESS or .crc), without the glob path
        # that made Spark log a FileNotFoundException looking for a _spark_metadata folder.
        return spark.read.option("pathGlobFilter", "*.parquet").parquet(str(folder))
    raise ValueError(f"the spark engine cannot read [features] kind = {features.kind!r}")


def _check_location(spark: SparkSession, features: FeatureSettings) -> None:
    """Validation, DQ and the slice dates read the table's files at [features] path: the same?"""
    from urllib.parse import unquote, urlparse

    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {features.table}").collect()
    location = next((r["data_type"] for r in rows if r["col_name"] == "Location"), None)
    if location is None or Path(unquote(urlparse(location).path)) != Path(features.path):
        raise ValueError(
            f"[features] path ({features.path}) must be the location of table {features.table} "
            f"({location or 'none: not a file-based table'}): the daemon reads its files there"
        )


def score_with_spark(
    request: dict[str, Any],
    engine: EngineSettings,
    *,
    timeouts: dict[int, float],
    spark: SparkSession | None = None,
    heartbeat: Callable[[], None] = lambda: None,
    sandbox: dict[str, Any] | None = None,
) -> dict[int, Outcome]:
    """Score request["models"] (the local engine's request) on Spark; an outcome per model run.

    sandbox: the [sandbox] settings the executors' model hosts apply (default: the defaults)."""
    if sandbox is None:
        sandbox = dataclasses.asdict(SandboxSettings())
    spark = spark or get_session(engine)
    if not sandbox.get("threads"):  # a task's share of the executor, as Spark gives its workers
        sandbox = {**sandbox, "threads": int(spark.conf.get("spark.task.cpus", "1") or 1)}
    features = FeatureSettings(**request["features"])
    day = dt.date.fromisoformat(request["slice_date"])
    scored_at = dt.datetime.fromisoformat(request["scored_at"])
    # Arrow batches of engine.batch_rows rows, as the local engine reads them.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(request["batch_rows"]))
    scratch = Path(request["models"][0]["out_dir"]).parent / "spark-output"
    frame = read_slice(spark, features, day)
    filters = {f["key"]: f for f in request.get("key_filters") or []}
    outcomes: dict[int, Outcome] = {}
    try:
        # One pass per key column that needs its own rows (usually one pass: one key, no filter).
        groups: dict[str | None, list[dict[str, Any]]] = {}
        for t in request["models"]:
            groups.setdefault(t["entity_key"] if t["entity_key"] in filters else None, []).append(t)
        for key, tasks in groups.items():
            keyed = frame if key is None else keep_rows(spark, frame, features, day, filters[key])
            outcomes.update(
                _score_all(
                    spark, keyed, tasks, timeouts, scored_at, scratch, heartbeat,
                    sandbox, engine.model_memory_mb,
                )
            )  # fmt: skip
        return outcomes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def keep_rows(
    spark: SparkSession,
    frame: DataFrame,
    features: FeatureSettings,
    day: dt.date,
    key_filter: dict[str, Any],
) -> DataFrame:
    """The rows the key policies keep (mldropd.batch.keys), chosen by position in file order.

    A row's position is its file's offset (the slice's files sorted by name, as the local
    reader and the key check read them) plus its index in the file (Parquet's _metadata).
    The duplicated keys and their kept positions are a small broadcast table.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StructField, StructType

    from mldropd.batch.keys import slice_files
    from mldropd.features import FeatureSource

    key, columns = key_filter["key"], frame.columns
    if key_filter["drop_nulls"]:
        frame = frame.where(F.col(key).isNotNull())
    if not key_filter["keep"]:
        return frame
    offsets, start = [], 0
    for path in slice_files(FeatureSource(features), day):
        offsets.append((path.name, start))
        start += pa.parquet.ParquetFile(path).metadata.num_rows
    files = spark.createDataFrame(offsets, "_file string, _offset long")
    kept = spark.createDataFrame(
        [tuple(pair) for pair in key_filter["keep"]],
        StructType(
            [StructField(key, frame.schema[key].dataType), StructField("_keep", LongType())]
        ),
    )
    placed = frame.select(
        *columns,
        F.col("_metadata.file_name").alias("_file"),
        F.col("_metadata.row_index").alias("_row"),
    ).join(F.broadcast(files), "_file", "left")
    return (
        placed.join(F.broadcast(kept), key, "left")
        .where(F.col("_keep").isNull() | (F.col("_keep") == F.col("_offset") + F.col("_row")))
        .select(*columns)
    )


def _score_all(
    spark: SparkSession,
    frame: DataFrame,
    tasks: list[dict[str, Any]],
    timeouts: dict[int, float],
    scored_at: dt.datetime,
    scratch: Path,
    heartbeat: Callable[[], None],
    sandbox: dict[str, Any],
    memory_mb: int,
) -> dict[int, Outcome]:
    from pyspark.sql.pandas.types import to_arrow_type

    keys = list(dict.fromkeys(t["entity_key"] for t in tasks))
    columns = list(dict.fromkeys(keys + [f for t in tasks for f in t["features"]]))
    frame = frame.select(*columns)
    specs = [
        WorkerModel(
            model_run_id=t["model_run_id"],
            model_id=t["model_id"],
            model_version=t["model_version"],
            owner_id=int(t.get("owner_id", 0)),
            entity_key=t["entity_key"],
            features=tuple(t["features"]),
            input=t["input"],
            call=t["call"],
            output=t["output"],
            timeout_s=timeouts.get(t["model_run_id"], 1800.0),
        )
        for t in tasks
    ]
    blobs = spark.sparkContext.broadcast(
        {t["model_run_id"]: Path(t["path"]).read_bytes() for t in tasks}
    )
    function = functools.partial(
        score_partition,
        job=uuid.uuid4().hex,
        specs=specs,
        blobs=blobs,
        scratch=str(scratch),
        stamp=int(scored_at.timestamp() * 1_000_000),  # as the local engine's writer stamps
        sandbox=sandbox,
        memory_mb=memory_mb,
    )
    report: list[Any] = []
    started = time.monotonic()
    try:
        _run_watched(
            spark,
            lambda: report.extend(frame.mapInArrow(function, REPORT_DDL).collect()),
            sum(s.timeout_s for s in specs) + 600.0,
            heartbeat,
        )
    except Exception as exc:  # the job failed as a whole (a worker died, or it was stopped)
        message = f"the Spark job failed: {_short(exc)}"
        return {t["model_run_id"]: Outcome(error=message) for t in tasks}
    finally:
        blobs.destroy()
    log.info("spark job: %d model(s) in %.1f s", len(tasks), time.monotonic() - started)
    outcomes = {}
    for t in tasks:
        run = t["model_run_id"]
        mine = [r for r in report if r["model_run_id"] == run]
        errors = [r["error"] for r in mine if r["error"]]
        if errors:
            outcomes[run] = Outcome(error=errors[0])
            continue
        files = [Path(r["path"]) for r in mine if r["path"]]
        key_type = to_arrow_type(frame.schema[t["entity_key"]].dataType)
        _move_files(files, Path(t["out_dir"]), t["entity_key"], key_type)
        outcomes[run] = Outcome(
            rows=sum(r["rows"] for r in mine), seconds=sum(r["seconds"] for r in mine)
        )
    return outcomes


def _move_files(files: list[Path], out_dir: Path, key: str, key_type: pa.DataType) -> None:
    """Rename the tasks' files of one model into its staging folder, as part-<n>.parquet."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if not files:  # an empty slice still gets an (empty) partition file, as in the local engine
        open_scores_file(out_dir / "part-0.parquet", key_type, key).close()
    for number, path in enumerate(sorted(files)):
        os.rename(path, out_dir / f"part-{number}.parquet")


def _run_watched(
    spark: SparkSession, action: Callable[[], None], deadline_s: float, beat: Callable[[], None]
) -> None:
    """Run a Spark action; beat the heartbeat meanwhile and cancel it past deadline_s."""
    group = f"mldropd-{os.getpid()}-{time.monotonic_ns()}"
    done = threading.Event()
    expired = threading.Event()

    def watch() -> None:
        started = time.monotonic()
        while not done.wait(2.0):
            beat()
            if time.monotonic() - started > deadline_s:
                expired.set()
                spark.sparkContext.cancelJobGroup(group)
                return

    watcher = threading.Thread(target=watch, name="spark-watchdog", daemon=True)
    spark.sparkContext.setJobGroup(group, "mldropd batch scoring", interruptOnCancel=True)
    watcher.start()
    try:
        action()
    except Exception:
        if expired.is_set():
            raise TimeoutError(
                f"the Spark job did not finish within {deadline_s:.0f} s (the sum of the models' "
                "time limits plus 600 s) and was cancelled"
            ) from None
        raise
    finally:
        done.set()
        watcher.join(timeout=5)
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]


def _short(exc: BaseException) -> str:
    """The root cause of a (long, Java-wrapped) Spark error, in at most two lines.

    A Python worker's failure reaches the driver as "An exception was thrown from the Python
    worker:" followed by the worker's traceback: its last line ("ModuleNotFoundError: No module
    named 'mldropd'") is the cause. A JVM failure keeps its last "Caused by:" line.
    """
    text = str(exc)
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    head = lines[0].strip()
    python = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    if python:  # the worker's traceback: its last line that is not a frame or source line
        tail = [
            line.strip()
            for line in lines[python[-1] + 1 :]
            if not line.startswith((" ", "\t")) and not line.strip().startswith("at ")
        ]
        if tail:
            cause = tail[0] if ":" in tail[0] else tail[-1]
            return f"{head[:300]}\n{cause[:500]}" if cause not in head else head[:500]
    caused = [line.strip() for line in lines if line.strip().startswith("Caused by:")]
    if caused:
        return f"{head[:300]}\n{caused[-1][:500]}"
    for line in lines:
        if line.strip().startswith(("PythonException", "TimeoutError", "org.apache.spark")):
            return line.strip()[:500]
    return head[:500]
