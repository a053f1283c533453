"""DQ of a batch, before and after (issue 19), side by side in one run: K models scored on two
days of 1M rows x 50 features, then the DQ of the second day against the first.

- before: today's step as it was, one model after the other: a DuckDB join of the scores with
  the slice for each model and each side, 5-fold adversarial validation, scipy's ks_2samp
  (a copy of the old `check_quality`, below, calling evaluate(method="kfold5"));
- after: `check_batch`: one hash-chosen sample per slice for all models, holdout AV, sorted
  PSI/KS, in two ways: "as the batch job": the current sample collected during the scoring
  read (KeySample; its cost, timed on the read's record batches, is added to the DQ of the
  batch) and the reference sample kept in the sample store when the reference day was scored
  (check_batch keeps today's sample for tomorrow: that write is timed); "both read": both
  samples drawn here by one read of each slice (the batch job's way without a store, or when
  the engine collects no sample, as Spark's).

Targets, on "as the batch job": the median over the K models of a model's share of the DQ of
the batch <= 1.0 s, and the DQ of the batch <= the sum of the models' raw predict_proba on the
slice (as bench/engine_limit.py computes it). The AUCs of both methods are printed side by side.

    python -m bench.dq [--rows 1000000] [--features 50] [--models 5] [--lgbm 2] [--repeat 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from bench.engine_limit import raw_predict, read_union
from bench.perf_common import (
    KEY,
    feature_settings,
    median,
    mixed_specs,
    print_table,
    save_models,
    start_sandboxes,
    target_row,
    task_dicts,
    write_features,
    write_result,
)

REFERENCE_DAY = dt.date(2026, 1, 14)
CURRENT_DAY = dt.date(2026, 1, 15)
SHIFTED = {"f03": 0.05, "f17": 0.1}  # a mild drift on the current day: features moved by sd


def score_day(root: Path, day: dt.date, tasks: list[Any], batch_rows: int, sandboxes: Any) -> float:
    """Score the slice of `day` with the local engine into each task's out_dir; seconds."""
    from mldropd.engines.base import ScoringRequest
    from mldropd.engines.local import LocalEngine

    request = ScoringRequest(
        feature_settings(root), day, batch_rows, dt.datetime.now(dt.UTC), tuple(tasks)
    )
    started = time.perf_counter()
    outcomes = LocalEngine(sandboxes, 8192).score(request, heartbeat=lambda: None)
    failed = [o.error for o in outcomes.values() if not o.ok]
    if failed:
        raise RuntimeError(f"a benchmark model failed: {failed[0]}")
    return time.perf_counter() - started


# -- before: a copy of the old per-model check_quality ----------------------------------------
def _before_sample(
    con: duckdb.DuckDBPyConnection,
    source: Any,
    slice_date: dt.date,
    part: Path,
    features: list[str],
    key: str,
    max_rows: int,
) -> pd.DataFrame:
    glob = f"'{part}/*.parquet'"
    q = source.quote
    feats = source.select_sql(slice_date, [key, *features])
    cols = ", ".join(f"f.{q(c)}" for c in features)
    return con.sql(
        f"SELECT {cols}, s.score FROM read_parquet({glob}) s JOIN ({feats}) f "
        f"ON s.{q(key)} = f.{q(key)} ORDER BY hash(s.{q(key)}) LIMIT {int(max_rows)}"
    ).df()


def before_check_quality(
    source: Any,
    current_part: Path,
    reference_part: Path,
    features: list[str],
    max_rows: int,
) -> tuple[Any, float]:
    """The old DQ step of one model (DuckDB join per side, 5-fold AV, ks_2samp); (report, s)."""
    from mldropd.batch.quality import feature_drift
    from mldropd.dq.evaluate import Thresholds, evaluate

    started = time.perf_counter()
    with source.connect() as con:

        def scores(part: Path) -> Any:
            return con.sql(f"SELECT score FROM read_parquet('{part}/*.parquet')").fetchnumpy()[
                "score"
            ]

        current_scores = scores(current_part)
        current = _before_sample(con, source, CURRENT_DAY, current_part, features, KEY, max_rows)
        reference_scores = scores(reference_part)
        reference = _before_sample(
            con, source, REFERENCE_DAY, reference_part, features, KEY, max_rows
        )
    report = evaluate(
        current,
        reference,
        features=features,
        thresholds=Thresholds(),
        is_probability=True,
        slice_rows=len(current_scores),
        av_max_rows=max_rows,
        current_scores=current_scores,
        reference_scores=reference_scores,
        method="kfold5",
    )
    feature_drift(current, reference, features, {}, 10)
    return report, time.perf_counter() - started


# -- after ------------------------------------------------------------------------------------
def after_check_batch(
    root: Path,
    scores: Path,
    staged: list[Path],
    specs: list[Any],
    max_rows: int,
    workers: int,
    current: dict[str, Any] | None = None,
    store: Any = None,
) -> Any:
    """check_batch over the K models; its BatchQuality."""
    from mldropd.batch.quality import ModelScores, check_batch
    from mldropd.features import FeatureSource
    from mldropd.settings import DQSettings

    models = [
        ModelScores(
            model_run_id=i + 1,
            model_id=i + 1,
            features=list(spec.features),
            entity_key=KEY,
            current_part=part,
            is_probability=True,
        )
        for i, (spec, part) in enumerate(zip(specs, staged, strict=True))
    ]
    return check_batch(
        FeatureSource(feature_settings(root)),
        scores,
        day=CURRENT_DAY,
        slice_date=CURRENT_DAY,
        models=models,
        settings=DQSettings(av_max_rows=max_rows),
        workers=workers,
        current=current,
        store=store,
    )


def collect_during_read(
    root: Path, day: dt.date, specs: list[Any], max_rows: int, batch_rows: int
) -> tuple[Any, float]:
    """The sample KeySample collects from a streaming read of the union columns, and the
    seconds it adds to that read (the reader's share)."""
    from mldropd.dq.sample import KeySample
    from mldropd.engines.local_io import read_batches

    columns = list(dict.fromkeys(f for s in specs for f in s.features))
    batches = list(read_batches(feature_settings(root), day, [KEY, *columns], batch_rows))
    started = time.perf_counter()
    sample = KeySample(KEY, columns, max_rows)
    for batch in batches:
        sample.add(batch)
    table = sample.table()
    return table, time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--lgbm", type=int, default=2, help="how many of the models are LightGBM")
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--max-rows", type=int, default=50_000, help="[dq] av_max_rows")
    ap.add_argument("--workers", type=int, default=2, help="check_batch threads (the target)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    from mldropd.batch.write import partition_dir
    from mldropd.features import FeatureSource

    tmp = Path(tempfile.mkdtemp(prefix="bench-dq-"))
    # (way, threads): "batch" = as the batch job (sample collected during the scoring read,
    # reference sample from the store), "read" = both samples drawn by reading the slices.
    variants = [("batch", w) for w in sorted({1, args.workers})] + [("read", args.workers)]
    try:
        root, scores = tmp / "features", tmp / "scores"
        write_features(root, args.rows, args.features, day=REFERENCE_DAY, seed=3)
        write_features(root, args.rows, args.features, day=CURRENT_DAY, seed=4, shift=SHIFTED)
        specs = mixed_specs(args.features, args.models, args.lgbm)
        paths = save_models(tmp / "models", specs, args.features, args.rows)
        cur_tasks = task_dicts(paths, specs, tmp / "staged")
        ref_tasks = [
            dataclasses.replace(t, out_dir=partition_dir(scores, REFERENCE_DAY, t.model_id))
            for t in cur_tasks
        ]
        staged = [Path(t.out_dir) for t in cur_tasks]
        sandboxes = start_sandboxes(tmp / "work")
        try:
            score_day(root, REFERENCE_DAY, ref_tasks, args.batch_rows, sandboxes)
            scoring_s = score_day(root, CURRENT_DAY, cur_tasks, args.batch_rows, sandboxes)
        finally:
            sandboxes.stop()
        import dill

        models = []
        for path, task in zip(paths, cur_tasks, strict=True):
            with open(path, "rb") as f:
                models.append((dill.load(f)["pipeline"], task))
        columns = list(dict.fromkeys([KEY] + [f for s in specs for f in s.features]))
        part = root / f"dt={CURRENT_DAY.isoformat()}"
        source = FeatureSource(feature_settings(root))
        import mldropd.batch.quality  # noqa: F401  (imports are not DQ time)
        from mldropd.dq.sample import SampleStore

        # What the reference day's batch left: its sample, kept when it was scored.
        store = SampleStore(tmp / "dq-samples", keep_days=7)
        kept, _ = collect_during_read(root, REFERENCE_DAY, specs, args.max_rows, args.batch_rows)
        store.save(REFERENCE_DAY, KEY, kept, args.max_rows)
        del kept

        raw: list[list[float]] = []
        before: list[list[float]] = []
        before_cpu: list[float] = []
        before_auc: list[float | None] = []
        after: dict[str, dict[str, list[Any]]] = {
            f"{way}-{w}": {"own": [], "shared": [], "wall": [], "cpu": [], "auc": []}
            for way, w in variants
        }
        collect: list[float] = []
        for _ in range(args.repeat):
            table = read_union("pyarrow", part, columns)
            raw.append(raw_predict(models, table))
            del table
            times = []
            before_auc = []
            cpu = time.process_time()
            for i, cur in enumerate(staged):
                ref = partition_dir(scores, REFERENCE_DAY, i + 1)
                report, seconds = before_check_quality(
                    source, cur, ref, list(specs[i].features), args.max_rows
                )
                times.append(seconds)
                before_auc.append(report.auc)
            before_cpu.append(time.process_time() - cpu)
            before.append(times)
            sample, seconds = collect_during_read(
                root, CURRENT_DAY, specs, args.max_rows, args.batch_rows
            )
            collect.append(seconds)
            for way, w in variants:
                batch_way = way == "batch"
                cpu, started = time.process_time(), time.perf_counter()
                batch = after_check_batch(
                    root,
                    scores,
                    staged,
                    specs,
                    args.max_rows,
                    w,
                    current={KEY: sample} if batch_way else None,
                    store=store if batch_way else None,
                )
                a = after[f"{way}-{w}"]
                # As the batch job: the sample's collection during the scoring read counts.
                a["wall"].append(time.perf_counter() - started + (seconds if batch_way else 0))
                a["cpu"].append(time.process_time() - cpu + (seconds if batch_way else 0))
                results = [batch.results[i + 1] for i in range(len(specs))]
                bad = [r for r in results if isinstance(r, Exception)]
                if bad:
                    raise RuntimeError(f"check_batch failed: {bad[0]!r}")
                if batch_way and batch.slices_read:
                    raise RuntimeError(f"as the batch job, slices were read: {batch.slices_read}")
                good = [r for r in results if not isinstance(r, Exception)]
                a["own"].append([r.seconds for r in good])
                a["shared"].append(batch.sample_seconds + (seconds if batch_way else 0))
                a["auc"] = [r.report.auc for r in good]
            del sample
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    k = len(specs)
    per_before = [median([b[m] for b in before]) for m in range(k)]
    raw_sum = median([sum(r) for r in raw])
    summary: dict[str, dict[str, float]] = {}
    for name, a in after.items():
        # A model's share of the batch: the batch's wall time split over its models by their
        # own time (threads overlap, so own times add up to more than the wall time).
        shares = [
            [o / sum(own) * wall for o in own]
            for own, wall in zip(a["own"], a["wall"], strict=True)
        ]
        summary[name] = {
            "per_model": median([median(s) for s in shares]),
            "batch": median(a["wall"]),
            "cpu": median(a["cpu"]),
            "shared": median(a["shared"]),
        }
    target = summary[f"batch-{args.workers}"]
    rows_out: list[list[Any]] = [
        [
            f"{s.name} ({s.kind}, {len(s.features)} features)",
            per_before[i],
            median([o[i] for o in after["batch-1"]["own"]]),
            before_auc[i],
            after["batch-1"]["auc"][i],
        ]
        for i, s in enumerate(specs)
    ]
    rows_out.append(
        [
            "shared samples, as the batch job (collect, keep, load)",
            "",
            summary["batch-1"]["shared"],
            "",
            "",
        ]
    )
    rows_out.append(
        [
            "shared samples, both read (2 slice reads)",
            "",
            summary[f"read-{args.workers}"]["shared"],
            "",
            "",
        ]
    )
    title = (
        f"DQ per model, {args.rows:,} rows x {args.features} features, K={k} ({args.lgbm} "
        f"LightGBM), {args.max_rows:,} sampled rows a side, one thread, median of {args.repeat}"
    )
    print_table(title, ["model", "before s", "after s", "AUC before", "AUC after"], rows_out)
    label = {"batch": "as the batch job", "read": "both samples read"}
    batch_rows: list[list[Any]] = [
        ["scoring (local engine, read + score + write)", scoring_s, ""],
        ["sum of raw predict_proba", raw_sum, ""],
        ["DQ before (one model after the other)", sum(per_before), median(before_cpu)],
    ]
    for way, w in variants:
        v = summary[f"{way}-{w}"]
        batch_rows.append([f"DQ after, {label[way]}, {w} thread(s)", v["batch"], v["cpu"]])
    batch_rows.append(["collect the current sample during the scoring read", median(collect), ""])
    print_table("The batch", ["measure", "wall s", "CPU s"], batch_rows)
    read = summary[f"read-{args.workers}"]
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            target_row(
                f"DQ per model (median share of the batch, {args.workers} threads)",
                target["per_model"],
                "<=",
                1.0,
            ),
            target_row(
                "DQ of the batch / sum of raw predict", target["batch"] / raw_sum, "<=", 1.0
            ),
            target_row("same, both samples read: per model", read["per_model"], "<=", 1.0),
            target_row("same, both samples read: batch / raw", read["batch"] / raw_sum, "<=", 1.0),
        ],
    )
    print(f"before/after, DQ of the batch: {sum(per_before) / target['batch']:.1f}x faster")
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "models": [vars(s) | {"features": len(s.features)} for s in specs],
        "scoring_s": scoring_s,
        "raw_predict_s": raw,
        "before_s": before,
        "before_cpu_s": before_cpu,
        "auc_before": before_auc,
        "after": after,
        "summary": summary,
        "collect_s": collect,
        "per_model_before_s": median(per_before),
        "batch_before_s": sum(per_before),
        "raw_sum_s": raw_sum,
        "met": target["per_model"] <= 1.0 and target["batch"] <= raw_sum,
    }
    write_result("dq", result, args.out)
    return result


if __name__ == "__main__":
    main()
