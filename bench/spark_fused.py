"""Benchmark (not a test): the Spark engine fused (K models in one mapInArrow pass) against K
separate passes (one Spark job per model, as mlflow's spark_udf scores), on the same data.

    .venv/bin/python -m bench.spark_fused                       # 1M rows x 50 features, K=1,5,10
    .venv/bin/python -m bench.spark_fused --rows 2000 --features 5 --ks 1,2 --repeats 1   # smoke

Both sides run mldropd.engines.spark.score_with_spark end to end (read, score, write the staged
score files); the separate side calls it once per model. Prints medians and the
separate/fused ratio; writes bench/results/spark_fused.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from mldropd.demo import feature_names, make_features
from mldropd.settings import EngineSettings, FeatureSettings

DAY = dt.date(2026, 1, 15)
RESULTS = Path(__file__).resolve().parent / "results" / "spark_fused.json"


def write_slice(root: Path, rows: int, n_features: int, files: int) -> None:
    """One hive partition root/dt=DAY/ of `files` Parquet files (Spark reads them in parallel)."""
    folder = root / f"dt={DAY.isoformat()}"
    folder.mkdir(parents=True)
    per_file = -(-rows // files)
    for number, start in enumerate(range(0, rows, per_file)):
        table = make_features(min(per_file, rows - start), n_features, 0, seed=7 + number)
        ids = np.arange(start, start + table.num_rows, dtype=np.int64)
        table = table.set_column(0, "entity_id", [ids])
        pq.write_table(table, folder / f"part-{number}.parquet", row_group_size=100_000)


def linear_models(folder: Path, k: int, n_features: int, per_model: int) -> list[dict[str, Any]]:
    """K scikit-learn pipelines (scaler + logistic regression) on `per_model` features each
    (model i starts at feature 3*i, so smaller subsets differ from model to model)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from mldropd import save_model

    names = feature_names(n_features)
    train = make_features(20_000, n_features, 0, seed=99).to_pandas()
    rng = np.random.default_rng(5)
    models = []
    for i in range(k):
        features = [names[(i * 3 + j) % n_features] for j in range(min(per_model, n_features))]
        logit = train[features].to_numpy() @ rng.normal(size=len(features))
        label = (rng.random(len(train)) < 1 / (1 + np.exp(-logit))).astype(int)
        pipeline = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression())])
        pipeline.fit(train[features], label)
        path = save_model(folder / f"lr{i}.dill", pipeline=pipeline, features=features)
        models.append({"id": i + 1, "name": f"lr{i}", "path": str(path), "features": features})
    return models


def one_pass(
    spark: Any,
    engine: EngineSettings,
    features: FeatureSettings,
    models: list[dict[str, Any]],
    scratch: Path,
) -> float:
    """Score `models` in one Spark job; return wall seconds (fails loudly on any model error)."""
    from mldropd.engines.spark import score_with_spark

    shutil.rmtree(scratch, ignore_errors=True)
    tasks = [
        {
            "model_run_id": m["id"],
            "model_id": m["id"],
            "model_version": 1,
            "path": m["path"],
            "features": m["features"],
            "input": "pandas",
            "call": "predict_proba",
            "output": "proba",
            "entity_key": "entity_id",
            "out_dir": str(scratch / m["name"]),
        }
        for m in models
    ]
    request = {
        "features": features.__dict__,
        "slice_date": DAY.isoformat(),
        "batch_rows": engine.batch_rows,
        "scored_at": dt.datetime.now(dt.UTC).isoformat(),
        "models": tasks,
    }
    started = time.perf_counter()
    outcomes = score_with_spark(request, engine, timeouts={}, spark=spark)
    seconds = time.perf_counter() - started
    bad = {k: o.error for k, o in outcomes.items() if not o.ok}
    if bad:
        raise RuntimeError(f"models failed in the benchmark: {bad}")
    return seconds


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every K; return the result document."""
    from mldropd.engines.spark import get_session

    ks = sorted(int(k) for k in args.ks.split(","))
    engine = EngineSettings(
        spark_master=args.master,
        spark_conf={"spark.ui.enabled": "false", "spark.driver.memory": "2g"},
    )
    work = Path(tempfile.mkdtemp(prefix="mldropd-bench-spark-"))
    try:
        features = FeatureSettings(path=str(work / "features"))
        started = time.perf_counter()
        write_slice(work / "features", args.rows, args.features, args.files)
        models = linear_models(work / "models", max(ks), args.features, args.model_features)
        prepared = time.perf_counter() - started
        session_started = time.perf_counter()
        spark = get_session(engine, "mldropd-bench")
        session_s = time.perf_counter() - session_started
        one_pass(spark, engine, features, models[:1], work / "out")  # warm-up: JVM, workers
        table = []
        for k in ks:
            fused, separate = [], []
            for _ in range(args.repeats):
                fused.append(one_pass(spark, engine, features, models[:k], work / "out"))
                separate.append(
                    sum(one_pass(spark, engine, features, [m], work / "out") for m in models[:k])
                )
            row = {
                "k": k,
                "fused_s": statistics.median(fused),
                "separate_s": statistics.median(separate),
                "fused_runs": fused,
                "separate_runs": separate,
            }
            row["speedup"] = row["separate_s"] / row["fused_s"]
            row["fused_rows_per_s"] = args.rows * k / row["fused_s"]
            table.append(row)
            print(
                f"K={k:>2}  fused {row['fused_s']:7.2f} s   separate {row['separate_s']:7.2f} s"
                f"   separate/fused {row['speedup']:5.2f}x",
                flush=True,
            )
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "benchmark": "spark_fused",
        "rows": args.rows,
        "features": args.features,
        "model_features": min(args.model_features, args.features),
        "files": args.files,
        "master": args.master,
        "repeats": args.repeats,
        "batch_rows": engine.batch_rows,
        "session_start_s": session_s,
        "data_and_models_s": prepared,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "results": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--files", type=int, default=8, help="Parquet files in the slice")
    parser.add_argument("--ks", default="1,5,10", help="model counts, comma-separated")
    parser.add_argument(
        "--model-features", type=int, default=50, help="features per model (default: all)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args)
    print("\n| K | fused (s) | separate (s) | separate / fused |\n|---|---|---|---|")
    for r in result["results"]:
        print(f"| {r['k']} | {r['fused_s']:.2f} | {r['separate_s']:.2f} | {r['speedup']:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
