"""Benchmark (not a test): the Spark engine's cost of containment (issue 14, item 7).

Side by side in one Spark session, interleaved (A, B, A, B, ...), on the same hive-partitioned
Parquet slice and the same K scikit-learn models of 2 owners:

  A  sandboxed: today's engine, end to end through mldropd.engines.spark.SparkEngine.score (what
     the batch job calls): one mapInArrow pass; each Spark Python worker keeps a sandbox fork
     server and starts one confined model host per owner per job, sends it Arrow batches over
     the pipe protocol and writes the checked scores to each model's Parquet file.
  B  in-process (the PRE-CONTAINMENT BASELINE, reconstructed below from git history, used only
     here, never by the product): the fused mapInArrow of commit 3aff624 (and a052084, the same
     code) before "Contain model code" (26145d7): every model unpickled inside the Spark Python
     worker and predict called there directly, scores written with the same writer.

Both sides read the slice with the product's read_slice, build each model's input with the
same mldropd.modelcall functions (unchanged since 3aff624) and write the staged score files
with the same local_io writer, so the difference is the containment (fork server, hosts,
protocol, checks). After every pass the staged files are read back and compared: both sides
must write identical tables (keys, scores, ids, stamps), or the run fails.

    python -m bench.spark_sandbox                                 # 1M rows x 50, K=5, local[2]
    python -m bench.spark_sandbox --rows 3000 --features 6 --k 2 --repeats 1   # smoke

Prints the medians, the sandboxed / in-process time ratio and the session start; writes
bench/results/spark_sandbox.json (machine, versions, load average, args, every time).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

# The report rows and the score files are the product worker's own (unchanged since 3aff624):
# only what happens between reading a batch and writing its scores differs.
from mldropd.engines.spark_worker import REPORT_DDL, _Output, _report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "spark_sandbox.json"
DAY = dt.date(2026, 1, 15)
SCORED_AT = dt.datetime(2026, 1, 16, 3, 0, tzinfo=dt.UTC)  # one stamp: both sides' files equal
OWNERS = 2


# =================================================================================================
# B: the pre-containment baseline. NOT USED BY THE PRODUCT.
#
# The Python-worker side is mldropd/engines/spark_worker.py as of commit 3aff624 (the last
# version before 26145d7 "Contain model code"), kept as it was: models unpickled in the Spark
# Python worker, cached per job in module dicts, predict called in the worker, a SIGALRM time
# limit. The driver side is _score_all of mldropd/engines/spark.py at 3aff624, for one key and
# no key filter (the benchmark's case), with the product's read_slice, _run_watched and
# _move_files (unchanged in what they do for this case).
# =================================================================================================

_B_JOB: list[str] = [""]
_B_MODELS: dict[int, Any] = {}
_B_USED: dict[int, float] = {}


@dataclass(frozen=True)
class BaselineModel:
    """WorkerModel of 3aff624: what a Python worker needs to call one model."""

    model_run_id: int
    model_id: int
    model_version: int
    entity_key: str
    features: tuple[str, ...]
    input: str
    call: str
    output: str
    timeout_s: float


class BaselineTimeout(Exception):
    """Raised inside a model's call when its time limit is over."""


@contextlib.contextmanager
def _b_time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the model's call after `seconds` (main thread only), as 3aff624 did."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: object) -> None:
        raise BaselineTimeout

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _b_load(spec: BaselineModel, blobs: Any) -> Any:
    if spec.model_run_id not in _B_MODELS:
        import dill

        _B_MODELS[spec.model_run_id] = dill.loads(blobs.value[spec.model_run_id])["pipeline"]
    return _B_MODELS[spec.model_run_id]


def baseline_partition(
    batches: Iterator[pa.RecordBatch],
    *,
    job: str,
    specs: list[BaselineModel],
    blobs: Any,
    scratch: str,
    stamp: int,
) -> Iterator[pa.RecordBatch]:
    """3aff624's score_partition: every model scores every batch in this Python worker."""
    from pyspark import TaskContext

    from mldropd.modelcall import check_scores, describe_model_error, predict, to_input

    if _B_JOB[0] != job:  # a reused worker starting another job: forget the last one's models
        _B_JOB[0] = job
        _B_MODELS.clear()
        _B_USED.clear()
    context = TaskContext.get()
    partition = context.partitionId() if context is not None else 0
    attempt = context.attemptNumber() if context is not None else 0
    outputs = {
        s.model_run_id: _Output(
            s,
            f"{scratch}/model_run_id={s.model_run_id}/part-{partition:05d}-{attempt}.parquet",
            stamp,
        )
        for s in specs
    }
    errors: dict[int, str] = {}
    spent = dict.fromkeys(outputs, 0.0)
    for index, batch in enumerate(batches):
        n = batch.num_rows
        if n == 0:
            continue
        for spec in specs:
            run_id = spec.model_run_id
            if run_id in errors:
                continue
            try:
                model = _b_load(spec, blobs)
            except Exception as exc:
                errors[run_id] = f"loading the model failed: {type(exc).__name__}: {exc}"
                continue
            started = time.perf_counter()
            try:
                with _b_time_limit(spec.timeout_s - _B_USED.get(run_id, 0.0)):
                    x = to_input(batch, list(spec.features), spec.input)
                    scores = predict(model, x, spec.call, spec.output)
                check_scores(scores, n)
            except BaselineTimeout:
                errors[run_id] = (
                    f"the model did not finish within its time limit of {spec.timeout_s:.0f} s "
                    "(set params.timeout_s or [engine] model_timeout_s) and was stopped"
                )
            except Exception as exc:
                errors[run_id] = (
                    f"scoring batch {index} of Spark partition {partition} ({n} rows) failed: "
                    f"{describe_model_error(exc)}"
                )
            seconds = time.perf_counter() - started
            spent[run_id] += seconds
            _B_USED[run_id] = _B_USED.get(run_id, 0.0) + seconds
            if run_id not in errors:
                outputs[run_id].write(batch.column(spec.entity_key), scores)
    for run_id, output in outputs.items():
        path = output.close(keep=run_id not in errors)
        yield _report(run_id, path, output.rows, errors.get(run_id), spent[run_id])


def baseline_score(spark: Any, request: Any) -> dict[int, Any]:
    """3aff624's score_with_spark + _score_all (one key column, no key filter)."""
    from pyspark.sql.pandas.types import to_arrow_type

    from mldropd.engines.base import Outcome
    from mldropd.engines.spark import _move_files, _run_watched, read_slice

    tasks = list(request.tasks)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(request.batch_rows))
    scratch = tasks[0].out_dir.parent / "spark-output"
    frame = read_slice(spark, request.features, request.slice_date)
    try:
        keys = list(dict.fromkeys(t.entity_key for t in tasks))
        columns = list(dict.fromkeys(keys + [f for t in tasks for f in t.features]))
        frame = frame.select(*columns)
        specs = [
            BaselineModel(t.model_run_id, t.model_id, t.model_version, t.entity_key,
                          tuple(t.features), t.input, t.call, t.output, t.timeout_s)
            for t in tasks
        ]  # fmt: skip
        blobs = spark.sparkContext.broadcast({t.model_run_id: t.path.read_bytes() for t in tasks})
        function = functools.partial(
            baseline_partition,
            job=uuid.uuid4().hex,
            specs=specs,
            blobs=blobs,
            scratch=str(scratch),
            stamp=int(request.scored_at.timestamp() * 1_000_000),
        )
        report: list[Any] = []
        try:
            _run_watched(
                spark,
                lambda: report.extend(frame.mapInArrow(function, REPORT_DDL).collect()),
                sum(s.timeout_s for s in specs) + 600.0,
                lambda: None,
            )
        finally:
            blobs.destroy()
        outcomes = {}
        for t in tasks:
            mine = [r for r in report if r["model_run_id"] == t.model_run_id]
            errors = [r["error"] for r in mine if r["error"]]
            if errors:
                outcomes[t.model_run_id] = Outcome(error=errors[0])
                continue
            key_type = to_arrow_type(frame.schema[t.entity_key].dataType)
            files = [Path(r["path"]) for r in mine if r["path"]]
            _move_files(files, t.out_dir, t.entity_key, key_type)
            outcomes[t.model_run_id] = Outcome(
                rows=sum(r["rows"] for r in mine), seconds=sum(r["seconds"] for r in mine)
            )
        return outcomes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# =================================================================================================
# The benchmark
# =================================================================================================


def make_request(features: Any, models: list[dict[str, Any]], out: Path, batch_rows: int,
                 timeout_s: float) -> Any:  # fmt: skip
    """The batch job's ScoringRequest for the models, staging under `out`."""
    from mldropd.engines.base import ModelTask, ScoringRequest

    tasks = tuple(
        ModelTask(
            model_run_id=m["id"],
            model_id=m["id"],
            model_version=1,
            owner_id=m["owner"],
            path=Path(m["path"]),
            features=tuple(m["features"]),
            input="pandas",
            call="predict_proba",
            output="proba",
            entity_key="entity_id",
            out_dir=out / m["name"],
            timeout_s=timeout_s,
            pipeline_type=m["pipeline_type"],
        )
        for m in models
    )
    return ScoringRequest(features, DAY, batch_rows, SCORED_AT, tasks)


def staged(request: Any) -> dict[int, pa.Table]:
    """Every model's staged score files, read back and sorted by key."""
    import pyarrow.parquet as pq

    tables = {}
    for t in request.tasks:
        parts = [pq.read_table(p) for p in sorted(t.out_dir.glob("*.parquet"))]
        tables[t.model_run_id] = pa.concat_tables(parts).sort_by(t.entity_key)
    return tables


def tree_cpu_s(root: int) -> float:
    """CPU seconds used so far by process `root` and every descendant, live or reaped: the
    JVM, Spark's Python workers, their fork servers and model hosts. A process that ended
    was reaped by its parent (a fork server is a subreaper), whose cutime/cstime then hold
    it, so the difference of two readings is the tree's CPU between them, whatever the load
    of other processes on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        fields = text[text.rindex(")") + 2 :].split()  # fields[0] is field 3 (state)
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        used[pid] = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / tick


def one_pass(side: str, spark: Any, engine: Any, request: Any) -> tuple[float, float]:
    """One timed scoring pass of a side: (wall s, CPU s of this process tree); fails loudly
    on any model error."""
    for t in request.tasks:
        shutil.rmtree(t.out_dir, ignore_errors=True)
    cpu = tree_cpu_s(os.getpid())
    started = time.perf_counter()
    if side == "sandboxed":
        outcomes = engine.score(request, heartbeat=lambda: None)
    else:
        outcomes = baseline_score(spark, request)
    seconds = time.perf_counter() - started
    cpu = tree_cpu_s(os.getpid()) - cpu
    bad = {run: o.error for run, o in outcomes.items() if not o.ok}
    if bad or len(outcomes) != len(request.tasks):
        raise RuntimeError(f"{side}: models failed in the benchmark: {bad}")
    return seconds, cpu


def check_same(reference: dict[int, pa.Table], tables: dict[int, pa.Table], label: str) -> None:
    for run, table in reference.items():
        if not table.equals(tables[run]):
            other = tables[run]
            diff = (
                float(np.max(np.abs(table["score"].to_numpy() - other["score"].to_numpy())))
                if table.num_rows == other.num_rows
                else None
            )
            raise AssertionError(
                f"{label}: model run {run} differs from the reference "
                f"({table.num_rows} vs {other.num_rows} rows, max |score diff| {diff})"
            )


def fingerprint(tables: dict[int, pa.Table]) -> dict[str, dict[str, Any]]:
    """Per model: rows, the sum of its scores and a sha256 of its keys and score bytes."""
    import hashlib

    out = {}
    for run, table in tables.items():
        digest = hashlib.sha256()
        for name in (table.column_names[0], "score"):
            digest.update(np.ascontiguousarray(table[name].to_numpy()).tobytes())
        out[str(run)] = {
            "rows": table.num_rows,
            "score_sum": float(np.sum(table["score"].to_numpy())),
            "sha256": digest.hexdigest(),
        }
    return out


def _worker_probe(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow function (the scoring passes' pool of Python workers): where the worker
    imports mldropd and bench from, its BLAS threads, and its fork server's sandbox layers."""
    import bench
    import mldropd
    from mldropd.engines import spark_worker

    for _ in batches:
        pass
    server = spark_worker._SERVER[0] if spark_worker._SERVER else None
    seen = {
        "pid": os.getpid(),
        "mldropd": mldropd.__file__,
        "bench": bench.__file__,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "sandbox_layers": sorted(server.layers) if server is not None else None,
    }
    yield pa.RecordBatch.from_pylist([{"seen": json.dumps(seen)}])


def probe_workers(spark: Any, partitions: int) -> list[dict[str, Any]]:
    frame = spark.range(partitions).repartition(partitions)
    rows = frame.mapInArrow(_worker_probe, "seen string").collect()
    return [json.loads(r["seen"]) for r in rows]


class LoadSampler:
    """The 1-minute load average every few seconds while the benchmark runs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)

    def _run(self, every_s: float) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(every_s):
                return

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        s = self.samples or [os.getloadavg()[0]]
        return {
            "min": round(min(s), 2),
            "median": round(statistics.median(s), 2),
            "max": round(max(s), 2),
            "samples": len(s),
        }


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("pyspark", "pyarrow", "numpy", "pandas", "scikit-learn", "dill", "mldropd"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    with contextlib.suppress(Exception):
        import subprocess

        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
        out["java"] = (java.stderr or java.stdout).splitlines()[0]
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.spark_fused import linear_models, write_slice
    from mldropd.engines.spark import SparkEngine, get_session
    from mldropd.settings import EngineSettings, FeatureSettings, SandboxSettings

    # The Python workers import this module (baseline_partition) and mldropd from this tree.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    engine = EngineSettings(
        spark_master=args.master,
        spark_conf={"spark.ui.enabled": "false", "spark.driver.memory": "2g"},
    )
    sandbox = SandboxSettings(threads=args.sandbox_threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="mldropd-bench-sandbox-"))
    try:
        features = FeatureSettings(path=str(work / "features"))
        started = time.perf_counter()
        write_slice(work / "features", args.rows, args.features, args.files)
        models = linear_models(work / "models", args.k, args.features, args.model_features)
        for i, m in enumerate(models):
            m["owner"] = 1 + i % OWNERS
            m["pipeline_type"] = "sklearn.pipeline.Pipeline"
        prepared = time.perf_counter() - started
        requests = {
            side: make_request(
                features, models, work / side, engine.batch_rows, engine.model_timeout_s
            )
            for side in ("sandboxed", "in-process")
        }
        with LoadSampler() as load:
            session_started = time.perf_counter()
            spark = get_session(engine, "mldropd-bench-sandbox")
            session_s = time.perf_counter() - session_started
            sandboxed = SparkEngine(engine, sandbox)
            sandboxed.session = spark
            # First passes in the fresh session, not in the medians: A's starts the Python
            # workers and their fork servers, B's then finds the workers running.
            first = {
                side: one_pass(side, spark, sandboxed, requests[side])[0]
                for side in ("sandboxed", "in-process")
            }
            reference = staged(requests["sandboxed"])
            check_same(reference, staged(requests["in-process"]), "first in-process pass")
            times: dict[str, list[float]] = {"sandboxed": [], "in-process": []}
            cpus: dict[str, list[float]] = {"sandboxed": [], "in-process": []}
            scores: dict[str, dict[str, Any]] = {}  # each side's last pass
            for repeat in range(args.repeats):
                for side in ("sandboxed", "in-process"):  # A, B, A, B, ...
                    wall, cpu = one_pass(side, spark, sandboxed, requests[side])
                    times[side].append(wall)
                    cpus[side].append(cpu)
                    tables = staged(requests[side])
                    check_same(reference, tables, f"{side} pass {repeat + 1}")
                    scores[side] = fingerprint(tables)
                    print(
                        f"  {side:>10} pass {repeat + 1}: {wall:7.2f} s wall, {cpu:7.2f} s CPU",
                        flush=True,
                    )
            probe = probe_workers(spark, 4)
            spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {side: statistics.median(v) for side, v in times.items()}
    cpu_medians = {side: statistics.median(v) for side, v in cpus.items()}
    return {
        "benchmark": "spark_sandbox",
        "command": " ".join(["python -m bench.spark_sandbox", *(args.argv or [])]),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_during": load.summary(),
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        "versions": versions(),
        "models": [
            {"id": m["id"], "owner": m["owner"], "features": len(m["features"])} for m in models
        ],
        "sandbox": {"require": list(sandbox.require), "threads": sandbox.threads},
        "workers": probe,
        "batch_rows": engine.batch_rows,
        "data_and_models_s": prepared,
        "session_start_s": session_s,
        "first_pass_s": first,
        "times_s": times,
        "median_s": medians,
        "ratio_sandboxed_over_in_process": medians["sandboxed"] / medians["in-process"],
        # CPU of the driver's process tree (JVM, Python workers, fork servers, hosts) per pass:
        # what the containment costs in work, much less sensitive to other processes' load.
        "cpu_s": cpus,
        "median_cpu_s": cpu_medians,
        "cpu_ratio_sandboxed_over_in_process": (
            cpu_medians["sandboxed"] / cpu_medians["in-process"]
        ),
        # Every pass's staged tables equal the first sandboxed pass's (else the run failed).
        "scores": scores,
        "scores_agree": scores["sandboxed"] == scores["in-process"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--k", type=int, default=5, help="models, of 2 owners (alternating)")
    parser.add_argument("--model-features", type=int, default=50, help="features per model")
    parser.add_argument("--files", type=int, default=8, help="Parquet files in the slice")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per side")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument(
        "--sandbox-threads",
        type=int,
        default=0,
        help="[sandbox] threads of the model hosts (default 0: the core count, as shipped)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.k < 1:
        parser.error("--repeats and --k must be at least 1")
    args.argv = list(sys.argv[1:] if argv is None else argv)
    result = run(args)
    m, ratio = result["median_s"], result["ratio_sandboxed_over_in_process"]
    c, cpu_ratio = result["median_cpu_s"], result["cpu_ratio_sandboxed_over_in_process"]
    b, a = "in-process", "sandboxed"
    print(
        f"\nSpark {args.master}, {args.rows:,} rows x {args.features} features, K={args.k} "
        f"({OWNERS} owners), median of {args.repeats}:\n"
        f"                                           wall        CPU (process tree)\n"
        f"  in-process (pre-containment baseline) {m[b]:7.2f} s  {c[b]:7.2f} s\n"
        f"  sandboxed (SparkEngine today)         {m[a]:7.2f} s  {c[a]:7.2f} s\n"
        f"  sandboxed / in-process                {ratio:7.2f}x  {cpu_ratio:7.2f}x\n"
        f"  session start (not in the passes)     {result['session_start_s']:7.2f} s\n"
        f"  first pass in the session: sandboxed {result['first_pass_s']['sandboxed']:.2f} s, "
        f"in-process {result['first_pass_s']['in-process']:.2f} s\n"
        f"  load average during the run: {result['machine']['load_average_during']}\n"
        f"  scores identical on both sides: {result['scores_agree']}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    # Run through the imported module, not __main__: Spark pickles baseline_partition by
    # reference (bench.spark_sandbox), so each Python worker keeps one module state (its
    # per-job model cache) across tasks, as the product's spark_worker module does.
    from bench import spark_sandbox

    raise SystemExit(spark_sandbox.main())
