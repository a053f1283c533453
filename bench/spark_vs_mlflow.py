"""End to end on Spark: `mldropd run` on the Spark engine against MLflow's `spark_udf`, each in a
fresh process that counts its own Spark session start (issue 19: mldropd at least 1.5x faster).

    python -m bench.spark_vs_mlflow [--rows 1000000] [--features 50] [--models 5] [--repeat 3]

Needs the optional extra: pip install -c constraints.txt -e '.[mlflow]' (mlflow-skinny and
skops, pinned in constraints.txt; no other extra includes it, `make install` does not). It installs
into mldropd's own venv without moving a pin (pip check is clean), so both sides run in one
interpreter.

The same data and models on both sides: K linear scikit-learn pipelines (bench.perf_common's
linear_specs, each on half of the columns) over one day of `--rows` x `--features` doubles
(perf_common.write_features: one file, 131,072-row groups).

Side A, mldropd: a home built by mldropd's own doors (the models registered with
mldropd.intake.register_file, validated in the sandbox), `[engine] default = "spark"` on
`--master`. A reference day is scored first (not timed) so the DQ of every timed run compares
two partitions, as a nightly batch does. Timed: `mldropd run --date D --model ...` from process
start to exit: its Spark session start, planning, the sandboxed model hosts in the executors,
the one fused Spark job, the partitions, DQ and the report. Phases from its JSON log.

Side B, MLflow as a data team uses it: each model logged with `mlflow.sklearn.log_model` (its
defaults: skops format, `pyfunc_predict_fn="predict_proba"` for probabilities) to a local
store (MLflow 3's default: a SQLite tracking database, artifacts in a local folder; its plain
file store now refuses to start unless MLFLOW_ALLOW_FILE_STORE is set), not timed. Timed: a
fresh Python process that imports MLflow and PySpark, starts a Spark session on `--master`,
then for each model `mlflow.pyfunc.spark_udf(spark, "models:/...", env_manager="local")` over
the day's slice, the positive class's probability written as Parquet (K Spark jobs), and stops.

The sides alternate (A B, B A, A B, ...: neither always gets the warmer machine), each pair on
its own fresh day; the ratio B/A is printed pair by pair with the medians. Then the scores of
each pair: A's partitions and B's outputs against predict_proba on the slice, row by row by
entity key. Writes bench/results/spark_vs_mlflow.json. Only stdlib at the top of this module:
side B's process imports nothing here that a data team's script would not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DAY = dt.date(2026, 2, 1)
KEY = "entity_id"
TOLERANCE = 1e-12
INSTALL = "pip install -c constraints.txt -e '.[mlflow]'"


# -- side B: the process a data team runs ------------------------------------------------------
def mlflow_side(request_path: str) -> None:
    """Score every model of the request with spark_udf, one Spark job each; print the stamps."""
    stamps = {"begin": time.time()}
    req = json.loads(Path(request_path).read_text())
    os.environ["PYSPARK_PYTHON"] = sys.executable  # as mldropd sets them for its executors
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    import mlflow.pyfunc
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    stamps["imported"] = time.time()
    mlflow.set_tracking_uri(req["tracking_uri"])
    spark = (
        SparkSession.builder.appName("mlflow-spark-udf")
        .master(req["master"])
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    stamps["session"] = time.time()
    frame = spark.read.parquet(req["slice"])
    jobs = []
    for model in req["models"]:
        started = time.time()
        udf = mlflow.pyfunc.spark_udf(
            spark, model["uri"], result_type="array<double>", env_manager="local"
        )
        scored = frame.select(KEY, udf(F.struct(*model["features"]))[1].alias("score"))
        scored.write.mode("overwrite").parquet(str(Path(req["out"]) / model["name"]))
        jobs.append(time.time() - started)
    stamps["scored"] = time.time()
    spark.stop()
    stamps["stopped"] = time.time()
    print(json.dumps({"stamps": stamps, "jobs_s": jobs}))


def run_mlflow(request: dict[str, Any], work: Path) -> dict[str, Any]:
    """Side B in a fresh process: wall time and its phases."""
    shutil.rmtree(request["out"], ignore_errors=True)
    path = work / "mlflow-request.json"
    path.write_text(json.dumps(request))
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "bench.spark_vs_mlflow", "--mlflow-side", str(path)],
        capture_output=True, text=True, check=False, timeout=3600,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"the MLflow side failed: {done.stdout[-1500:]} {done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    s = out["stamps"]
    return {
        "wall_s": ended - started,
        "start_s": s["imported"] - started,  # interpreter, mlflow and pyspark imports
        "session_s": s["session"] - s["imported"],
        "scoring_s": s["scored"] - s["session"],  # K x (spark_udf + job + Parquet)
        "jobs_s": out["jobs_s"],
        "after_s": ended - s["scored"],  # spark.stop() and exit
    }


# -- side A: mldropd run -------------------------------------------------------------------------
def run_mldropd(home: Path, day: dt.date, ids: list[int]) -> dict[str, Any]:
    """Side A: `mldropd run --date D --model ...` in a fresh process; wall time and phases."""
    from bench.e2e import event_time as at
    from bench.e2e import logged_run

    args = ["--date", day.isoformat(), *[a for i in ids for a in ("--model", str(i))]]
    started, ended, events = logged_run(home, args, timeout=3600)
    batch, scoring = at(events, "batch started"), at(events, "scoring with")
    session = at(events, "spark session started")
    scored = at(events, "spark job:", last=True)
    finished = at(events, "model run succeeded", last=True)
    if not (batch and scoring and scored and finished):
        raise RuntimeError(f"mldropd run's JSON log lacks a phase: {events[-5:]}")
    succeeded = [e for e in events if "model run succeeded" in str(e.get("event", ""))]
    if len(succeeded) != len(ids):
        raise RuntimeError(f"{len(ids) - len(succeeded)} model run(s) did not succeed: {events}")
    job = next(e for e in events if "spark job:" in str(e.get("event", "")))
    found = re.search(r" in ([0-9.]+) s", str(job["event"]))
    return {
        "wall_s": ended - started,
        "start_s": batch - started,  # interpreter, imports, registry, fork server
        "plan_s": scoring - batch,  # models fetched, keys checked, engine chosen
        "scoring_s": scored - scoring,  # Spark session start + the one fused job
        "session_s": (session - scoring) if session else None,  # the session start alone
        "job_s": float(found.group(1)) if found else None,
        "dq_s": finished - scored,  # DQ and publishing
        "after_s": ended - finished,  # report and exit
    }


def spark_home(root: Path, days: list[dt.date], rows: int, n_features: int, master: str) -> Path:
    """A home whose batches score on Spark; one day of features per date."""
    from bench.perf_common import write_features

    home = root / "home"
    home.mkdir(parents=True)
    for i, day in enumerate(days):
        write_features(home / "features", rows, n_features, day=day, seed=3 + i)
    (home / "config.toml").write_text(
        '[server]\nport = 18998\nlog_format = "json"\n[features]\npath = "features"\n'
        f'max_staleness_days = 0\n[engine]\ndefault = "spark"\nspark_master = "{master}"\n'
        "[sandbox]\nrequire = []\n"
    )
    return home


# -- the models on MLflow's side, and the scores compared ----------------------------------------
def pipelines(paths: list[Path]) -> list[Any]:
    """The fitted pipelines inside mldropd's model files (the very objects MLflow logs)."""
    import dill

    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(dill.load(f)["pipeline"])
    return out


def log_models(
    fitted: list[Any], specs: list[Any], tracking: Path, sample: Any
) -> tuple[str, list[dict[str, Any]]]:
    """Log each pipeline with mlflow.sklearn.log_model (its defaults; probabilities out), a
    few rows of the data as its input example (MLflow infers the signature from them)."""
    import mlflow
    import mlflow.sklearn

    uri = f"sqlite:///{tracking / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    # Artifacts beside the database (MLflow's default is ./mlruns under the current folder).
    mlflow.create_experiment("mldropd-bench", artifact_location=(tracking / "artifacts").as_uri())
    mlflow.set_experiment("mldropd-bench")
    models = []
    for pipeline, spec in zip(fitted, specs, strict=True):
        features = list(spec.features)
        with mlflow.start_run(run_name=spec.name):
            info = mlflow.sklearn.log_model(
                pipeline,
                name=spec.name,
                input_example=sample.select(features).to_pandas(),
                pyfunc_predict_fn="predict_proba",
            )
        models.append({"name": spec.name, "uri": info.model_uri, "features": features})
    return uri, models


def compare(
    slice_dir: Path, fitted: list[Any], specs: list[Any], a_dirs: list[Path], b_dirs: list[Path]
) -> list[dict[str, Any]]:
    """Each model's scores from A and from B against predict_proba on the slice, by key."""
    import numpy as np
    import pyarrow.parquet as pq

    frame = pq.read_table(slice_dir).to_pandas()
    keys = frame[KEY].to_numpy()
    order = np.argsort(keys)
    rows = []
    for pipeline, spec, a_dir, b_dir in zip(fitted, specs, a_dirs, b_dirs, strict=True):
        truth = pipeline.predict_proba(frame[list(spec.features)])[:, 1][order]
        row: dict[str, Any] = {"model": spec.name, "rows": len(keys)}
        got = {}
        for side, folder in (("a", a_dir), ("b", b_dir)):
            table = pq.read_table(folder, columns=[KEY, "score"]).to_pandas().sort_values(KEY)
            same_keys = bool(np.array_equal(table[KEY].to_numpy(), keys[order]))
            row[f"{side}_rows"] = len(table)
            row[f"{side}_same_keys"] = same_keys
            if not same_keys:
                continue
            got[side] = table["score"].to_numpy()
            diff = np.abs(got[side] - truth)
            row[f"{side}_max_abs_diff"] = float(diff.max(initial=0.0))
            row[f"{side}_bit_identical"] = int((got[side] == truth).sum())
        if len(got) == 2:
            row["a_vs_b_max_abs_diff"] = float(np.abs(got["a"] - got["b"]).max(initial=0.0))
        row["within_tolerance"] = all(
            row.get(f"{s}_same_keys") and row[f"{s}_max_abs_diff"] <= TOLERANCE for s in "ab"
        )
        rows.append(row)
    return rows


# -- the benchmark -----------------------------------------------------------------------------
def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from bench.e2e import _register
    from bench.perf_common import linear_specs, save_models
    from mldropd.batch.write import partition_dir
    from mldropd.settings import load_settings

    days = [DAY + dt.timedelta(days=i) for i in range(args.repeat + 1)]
    prepared = time.perf_counter()
    home = spark_home(tmp, days, args.rows, args.features, args.master)
    specs = linear_specs(args.features, args.models)
    paths = save_models(tmp / "models", specs, args.features, data_rows=args.rows)
    ids = _register(home, paths)
    fitted = pipelines(paths)
    (tmp / "mlflow").mkdir()
    sample = pq.read_table(home / "features" / f"dt={days[0].isoformat()}").slice(0, 5)
    tracking, logged = log_models(fitted, specs, tmp / "mlflow", sample)
    scores_root = Path(load_settings(home / "config.toml", env={}).scores.path)
    print(f"data, models, registry and MLflow logging: {time.perf_counter() - prepared:.1f} s")
    reference = run_mldropd(home, days[0], ids)  # DQ of the timed runs compares with this day
    print(f"reference day (A, not counted): {reference['wall_s']:.1f} s", flush=True)
    pairs = []
    for i, day in enumerate(days[1:]):
        slice_dir = home / "features" / f"dt={day.isoformat()}"
        request = {
            "master": args.master,
            "tracking_uri": tracking,
            "slice": str(slice_dir),
            "models": logged,
            "out": str(tmp / "mlflow-out"),
        }
        load = os.getloadavg()[0]
        first = "a" if i % 2 == 0 else "b"
        pair: dict[str, Any] = {"day": day.isoformat(), "first": first, "load_1m": load}
        for side in (first, "b" if first == "a" else "a"):
            pair[side] = (
                run_mldropd(home, day, ids) if side == "a" else run_mlflow(request, tmp)
            )  # fmt: skip
        pair["ratio"] = pair["b"]["wall_s"] / pair["a"]["wall_s"]
        pair["scores"] = compare(
            slice_dir,
            fitted,
            specs,
            [partition_dir(scores_root, day, model_id) for model_id in ids],
            [tmp / "mlflow-out" / spec.name for spec in specs],
        )
        print(
            f"pair {i + 1} ({first.upper()} first, load {load:.1f}): A {pair['a']['wall_s']:.1f} s"
            f"  B {pair['b']['wall_s']:.1f} s  B/A {pair['ratio']:.2f}x  scores within "
            f"{TOLERANCE:g}: {all(r['within_tolerance'] for r in pair['scores'])}",
            flush=True,
        )
        pairs.append(pair)
    return {"pairs": pairs, "reference_run": reference}


def report(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from bench.perf_common import median, print_table, target_row

    pairs = result["pairs"]

    def med(side: str, key: str) -> float:
        return median([p[side][key] for p in pairs if p[side].get(key) is not None] or [0.0])

    print_table(
        f"Pair by pair ({args.rows:,} rows x {args.features}, K={args.models}, {args.master})",
        ["pair", "first", "load 1m", "A mldropd s", "B MLflow s", "B / A"],
        [[i + 1, p["first"].upper(), p["load_1m"], p["a"]["wall_s"], p["b"]["wall_s"],
          p["ratio"]] for i, p in enumerate(pairs)],
    )  # fmt: skip
    print_table(
        f"Phases, median of {len(pairs)}",
        ["side", "wall s", "start s", "plan s", "session+scoring s", "of which session s",
         "of which Spark jobs s", "DQ s", "DQ s per model", "after s"],
        [["A mldropd run", med("a", "wall_s"), med("a", "start_s"), med("a", "plan_s"),
          med("a", "scoring_s"), med("a", "session_s"), med("a", "job_s"), med("a", "dq_s"),
          med("a", "dq_s") / args.models, med("a", "after_s")],
         ["B MLflow spark_udf", med("b", "wall_s"), med("b", "start_s"), "-",
          med("b", "session_s") + med("b", "scoring_s"), med("b", "session_s"),
          median([sum(p["b"]["jobs_s"]) for p in pairs]), "-", "-", med("b", "after_s")]],
    )  # fmt: skip
    ratio = median([p["ratio"] for p in pairs])
    result["ratio_median"] = ratio
    result["scores_within_tolerance"] = all(
        r["within_tolerance"] for p in pairs for r in p["scores"]
    )
    worst = {
        s: max(r.get(f"{s}_max_abs_diff", float("inf")) for p in pairs for r in p["scores"])
        for s in "ab"
    }
    result["max_abs_diff"] = worst
    result["targets"] = [target_row("B / A, median of the pairs", ratio, ">=", 1.5)]
    print_table("Target", ["measure", "value", "target", ""], result["targets"])
    last = pairs[-1]["scores"]
    print_table(
        f"Scores of the last pair against predict_proba (tolerance {TOLERANCE:g})",
        ["model", "rows", "A max |diff|", "A bit-identical", "B max |diff|", "B bit-identical",
         "|A - B| max"],
        [[r["model"], r["rows"], r.get("a_max_abs_diff", "keys differ"), r.get("a_bit_identical"),
          r.get("b_max_abs_diff", "keys differ"), r.get("b_bit_identical"),
          r.get("a_vs_b_max_abs_diff")] for r in last],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=5, help="K linear models")
    ap.add_argument("--repeat", type=int, default=3, help="pairs of runs (A and B)")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if importlib.util.find_spec("mlflow") is None or importlib.util.find_spec("skops") is None:
        sys.exit(f"MLflow's side needs mlflow-skinny and skops: {INSTALL}")
    from bench.perf_common import write_result

    tmp = Path(tempfile.mkdtemp(prefix="bench-spark-mlflow-"))
    try:
        result = measure(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(args, result)
    params = vars(args) | {"out": str(args.out) if args.out else None}
    write_result("spark_vs_mlflow", {"params": params, **result}, args.out)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mlflow-side"]:
        mlflow_side(sys.argv[2])
    else:
        main()
