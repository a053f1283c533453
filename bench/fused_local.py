"""K linear models, local engine: K separate passes (read + score + write per model) against one
fused pass over the union of their columns, side by side (target: ratio >= 4).

Each pass is measured twice: the engine alone (score_slice in this process) and the sandboxed
scoring child as the batch job starts it (process start, imports and model loading included:
what a separate batch run per model would pay).

    python -m bench.fused_local [--rows 1000000] [--features 50] [--models 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.perf_common import (
    linear_specs,
    median,
    print_table,
    run_child,
    run_engine,
    save_models,
    target_row,
    task_dicts,
    write_features,
    write_result,
)

TARGET = 4.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-fused-"))
    times: dict[str, list[float]] = {
        "fused_engine": [],
        "separate_engine": [],
        "fused_child": [],
        "separate_child": [],
    }
    try:
        root = tmp / "features"
        write_features(root, args.rows, args.features)
        specs = linear_specs(args.features, args.models)
        paths = save_models(tmp / "models", specs, args.features, args.rows)
        tasks = task_dicts(paths, specs, tmp / "scores")
        run_engine(root, tasks[:1], args.batch_rows)  # warm: imports, page cache

        def fresh() -> None:
            shutil.rmtree(tmp / "scores", ignore_errors=True)

        for _ in range(args.repeat):
            fresh()
            times["fused_engine"].append(run_engine(root, tasks, args.batch_rows)[0])
            fresh()
            times["separate_engine"].append(
                sum(run_engine(root, [t], args.batch_rows)[0] for t in tasks)
            )
            fresh()
            times["fused_child"].append(
                run_child(root, tasks, args.batch_rows, tmp / "child")["seconds"]
            )
            fresh()
            times["separate_child"].append(
                sum(run_child(root, [t], args.batch_rows, tmp / "child")["seconds"] for t in tasks)
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    engine_ratios = [
        s / f for s, f in zip(times["separate_engine"], times["fused_engine"], strict=True)
    ]
    child_ratios = [
        s / f for s, f in zip(times["separate_child"], times["fused_child"], strict=True)
    ]
    k = len(specs)
    rows = [
        ["engine: one fused pass", median(times["fused_engine"]), ""],
        [
            f"engine: {k} separate passes",
            median(times["separate_engine"]),
            f"{median(engine_ratios):.2f}x",
        ],
        ["scoring child: one fused pass", median(times["fused_child"]), ""],
        [
            f"scoring child: {k} separate passes",
            median(times["separate_child"]),
            f"{median(child_ratios):.2f}x",
        ],
    ]
    print_table(
        f"Fused vs separate passes: {args.rows:,} rows x {args.features} features, K={k} "
        f"linear models on {len(specs[0].features)} features each, median of {args.repeat}",
        ["pass", "seconds", "separate / fused"],
        rows,
    )
    ratio = median(child_ratios)
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            target_row("separate / fused (scoring child)", ratio, ">=", TARGET),
            target_row("separate / fused (engine only)", median(engine_ratios), ">=", TARGET),
        ],
    )
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "seconds": times,
        "engine_ratios": engine_ratios,
        "child_ratios": child_ratios,
        "ratio": ratio,
        "engine_ratio": median(engine_ratios),
        "target": TARGET,
        "met": ratio >= TARGET,
    }
    write_result("fused_local", result, args.out)
    return result


if __name__ == "__main__":
    main()
