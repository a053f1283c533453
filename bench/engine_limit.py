"""Local engine end to end vs the machine's limit: one read of the union columns plus each model's
raw predict_proba on in-memory inputs, measured side by side (target: ratio <= 1.15 with every
sandbox layer in force: the engine's time includes starting the owners' sandboxed hosts from a
warm fork server, sending them the model files and every batch, and checking their scores).

    python -m bench.engine_limit [--rows 1000000] [--features 50] [--models 5] [--lgbm 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow.parquet as pq

from bench.perf_common import (
    DAY,
    KEY,
    median,
    mixed_specs,
    print_table,
    run_engine,
    save_models,
    start_sandboxes,
    target_row,
    task_dicts,
    write_features,
    write_result,
)

TARGET = 1.15


def read_union(kind: str, part: Path, columns: list[str]) -> Any:
    """One read of the union columns into memory with the given reader."""
    if kind == "pyarrow":
        return pq.read_table(part, columns=columns)
    if kind == "polars":
        import polars as pl

        return pl.scan_parquet(part / "*.parquet").select(columns).collect()
    sel = ", ".join(f'"{c}"' for c in columns)
    with duckdb.connect() as con:
        return con.sql(f"SELECT {sel} FROM read_parquet('{part}/*.parquet')").to_arrow_table()


def raw_predict(models: list[tuple[Any, dict[str, Any]]], table: Any) -> list[float]:
    """Seconds of each model's predict_proba on its whole input, built in memory beforehand."""
    from mldropd.modelcall import to_input

    out = []
    for pipeline, task in models:
        x = to_input(table, list(task.features), task.input)
        started = time.perf_counter()
        pipeline.predict_proba(x)
        out.append(time.perf_counter() - started)
        del x
    return out


def identical(models: list[tuple[Any, dict[str, Any]]], table: Any) -> list[bool]:
    """Engine scores equal predict_proba of the whole slice, bit for bit, for every model."""
    from mldropd.modelcall import to_input

    keys = table.column(KEY).to_numpy()
    order = np.argsort(keys)
    same = []
    for pipeline, task in models:
        expected = pipeline.predict_proba(to_input(table, list(task.features), task.input))[:, 1]
        got = duckdb.sql(
            f"SELECT {KEY}, score FROM read_parquet('{task.out_dir}/*.parquet') ORDER BY 1"
        ).fetchnumpy()
        same.append(
            bool(np.array_equal(got[KEY], keys[order]))
            and bool(np.array_equal(got["score"], expected[order]))
        )
    return same


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--lgbm", type=int, default=2, help="how many of the models are LightGBM")
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--owners", type=int, default=1, help="spread the models over N owners")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        root = tmp / "features"
        write_features(root, args.rows, args.features)
        part = root / f"dt={DAY.isoformat()}"
        specs = mixed_specs(args.features, args.models, args.lgbm)
        paths = save_models(tmp / "models", specs, args.features, args.rows)
        tasks = task_dicts(paths, specs, tmp / "scores", owners=args.owners)
        sandboxes = start_sandboxes(tmp / "work")
        columns = list(dict.fromkeys([KEY] + [f for s in specs for f in s.features]))
        import dill

        models = []
        for path, task in zip(paths, tasks, strict=True):
            with open(path, "rb") as f:
                models.append((dill.load(f)["pipeline"], task))
        for kind in ("polars", "duckdb", "pyarrow"):  # warm: imports, page cache
            table = read_union(kind, part, columns)
        raw_predict(models, table)

        reads: dict[str, list[float]] = {"pyarrow": [], "polars": [], "duckdb": []}
        raw: list[list[float]] = []
        engine: list[float] = []
        engine_cpu: list[float] = []
        limit_cpu: list[float] = []
        for _ in range(args.repeat):
            for kind in reads:  # side by side, interleaved with the engine runs
                started = time.perf_counter()
                table = read_union(kind, part, columns)
                reads[kind].append(time.perf_counter() - started)
                del table
            cpu = time.process_time()
            table = read_union("pyarrow", part, columns)
            raw.append(raw_predict(models, table))
            limit_cpu.append(time.process_time() - cpu)
            del table
            shutil.rmtree(tmp / "scores", ignore_errors=True)
            cpu = time.process_time()
            seconds, rows = run_engine(root, tasks, args.batch_rows, sandboxes)
            engine_cpu.append(time.process_time() - cpu)
            engine.append(seconds)
            assert rows == args.rows
        shutil.rmtree(tmp / "scores", ignore_errors=True)
        run_engine(root, tasks, args.batch_rows, sandboxes)
        same = identical(models, pq.read_table(part, columns=columns))
        layers = sorted(sandboxes.layers)
        sandboxes.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    fastest = min(reads, key=lambda k: median(reads[k]))
    limits = [reads[fastest][i] + sum(raw[i]) for i in range(args.repeat)]
    ratios = [engine[i] / limits[i] for i in range(args.repeat)]
    per_model = [median([r[m] for r in raw]) for m in range(len(specs))]
    # Best of the repeats on both sides: a model's raw call is sometimes several times slower
    # (e.g. a linear model on numpy right after LightGBM: 0.4-0.8 s instead of 0.09 s), which
    # inflates that repeat's limit in the engine's favour. The minimum is the machine's limit.
    best_limit = min(reads[fastest]) + sum(min(r[m] for r in raw) for m in range(len(specs)))
    best_ratio = min(engine) / best_limit
    rows_out: list[list[Any]] = [
        [f"read union ({len(columns)} columns), {k}", median(v), ""] for k, v in reads.items()
    ]
    rows_out += [
        [f"raw predict_proba {s.name} ({s.kind}, {len(s.features)} features, {s.input})", t, ""]
        for s, t in zip(specs, per_model, strict=True)
    ]
    rows_out += [
        [f"limit = read ({fastest}) + sum raw predict", median(limits), ""],
        [
            f"local engine, {args.owners} sandboxed host(s) ({', '.join(layers)})",
            median(engine),
            f"{median(ratios):.3f}x",
        ],
    ]
    rows_out.append(["CPU s: engine / limit", median(engine_cpu) / median(limit_cpu), ""])
    title = (
        f"Local engine vs the limit: {args.rows:,} rows x {args.features} features, "
        f"K={len(specs)} ({args.lgbm} LightGBM), {args.owners} owner(s), "
        f"batch {args.batch_rows:,}, "
        f"median of {args.repeat}"
    )
    print_table(title, ["measure", "seconds", "ratio"], rows_out)
    ratio = max(median(ratios), best_ratio)  # the less favourable of the two
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            target_row(
                "engine / limit, median of the repeats' ratios", median(ratios), "<=", TARGET
            ),
            target_row("best engine / best limit (each part's best)", best_ratio, "<=", TARGET),
        ],
    )
    print(f"scores bit-identical to predict_proba on the whole slice: {same}")
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "models": [vars(s) | {"features": len(s.features)} for s in specs],
        "reads_s": reads,
        "raw_predict_s": raw,
        "limit_s": limits,
        "engine_s": engine,
        "sandbox_layers": layers,
        "engine_cpu_s": engine_cpu,
        "limit_cpu_s": limit_cpu,
        "ratios": ratios,
        "median_ratio": median(ratios),
        "best_limit_s": best_limit,
        "best_ratio": best_ratio,
        "ratio": ratio,
        "target": TARGET,
        "met": ratio <= TARGET,
        "fastest_reader": fastest,
        "bit_identical": same,
    }
    write_result("engine_limit", result, args.out)
    return result


if __name__ == "__main__":
    main()
