"""K linear models, local engine: K separate passes (read + score + write per model) against one
fused pass over the union of their columns, side by side (target: ratio >= 4).

Each pass is the local engine as a batch job runs it: the trusted reader and writer, and the
models in a sandboxed host forked from a warm fork server (host start and model load included:
what a separate batch run per model would pay on top of its read and write).

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
    run_engine,
    save_models,
    start_sandboxes,
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
    times: dict[str, list[float]] = {"fused_engine": [], "separate_engine": []}
    try:
        root = tmp / "features"
        write_features(root, args.rows, args.features)
        specs = linear_specs(args.features, args.models)
        paths = save_models(tmp / "models", specs, args.features, args.rows)
        tasks = task_dicts(paths, specs, tmp / "scores")
        sandboxes = start_sandboxes(tmp / "work")
        run_engine(root, tasks[:1], args.batch_rows, sandboxes)  # warm: imports, page cache

        def fresh() -> None:
            shutil.rmtree(tmp / "scores", ignore_errors=True)

        for _ in range(args.repeat):
            fresh()
            times["fused_engine"].append(run_engine(root, tasks, args.batch_rows, sandboxes)[0])
            fresh()
            times["separate_engine"].append(
                sum(run_engine(root, [t], args.batch_rows, sandboxes)[0] for t in tasks)
            )
        sandboxes.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    engine_ratios = [
        s / f for s, f in zip(times["separate_engine"], times["fused_engine"], strict=True)
    ]
    k = len(specs)
    rows = [
        ["engine: one fused pass", median(times["fused_engine"]), ""],
        [
            f"engine: {k} separate passes",
            median(times["separate_engine"]),
            f"{median(engine_ratios):.2f}x",
        ],
    ]
    print_table(
        f"Fused vs separate passes: {args.rows:,} rows x {args.features} features, K={k} "
        f"linear models on {len(specs[0].features)} features each, median of {args.repeat}",
        ["pass", "seconds", "separate / fused"],
        rows,
    )
    ratio = median(engine_ratios)
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [target_row("separate / fused (engine with sandboxed hosts)", ratio, ">=", TARGET)],
    )
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "seconds": times,
        "engine_ratios": engine_ratios,
        "ratio": ratio,
        "engine_ratio": median(engine_ratios),
        "target": TARGET,
        "met": ratio >= TARGET,
    }
    write_result("fused_local", result, args.out)
    return result


if __name__ == "__main__":
    main()
