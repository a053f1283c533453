"""Peak RSS of a batch's scoring at 10M rows against 1M rows (target: ratio <= 1.2): the
trusted reader/writer process and the sandboxed model host each stay bounded by the batch
size, not by the slice.

    python -m bench.memory_flat [--small 1000000] [--large 10000000] [--features 50]

The 10M-row slice at 50 features is about 4.8 GB of Parquet (written in about 2-3 minutes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.perf_common import (
    median,
    mixed_specs,
    print_table,
    run_engine_process,
    save_models,
    target_row,
    task_dicts,
    write_features,
    write_result,
)

TARGET = 1.2


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--large", type=int, default=10_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--lgbm", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="keep the generated data here and reuse it on the next run",
    )
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    data = args.data or tmp
    runs: dict[int, list[dict[str, Any]]] = {args.small: [], args.large: []}
    try:
        specs = mixed_specs(args.features, args.models, args.lgbm)
        paths = save_models(tmp / "models", specs, args.features, args.small)
        tasks = task_dicts(paths, specs, tmp / "scores")
        roots = {}
        for rows in runs:
            roots[rows] = data / f"features-{rows}x{args.features}"
            if not (roots[rows] / ".complete").exists():
                shutil.rmtree(roots[rows], ignore_errors=True)
                write_features(roots[rows], rows, args.features)
                (roots[rows] / ".complete").touch()
        for _ in range(args.repeat):
            for rows, root in roots.items():  # interleaved: both sizes see the same machine
                shutil.rmtree(tmp / "scores", ignore_errors=True)
                result = run_engine_process(root, tasks, args.batch_rows, tmp / "engine")
                result["peak_rss_mb"] = result["reader_peak_mb"] + result["host_peak_mb"]
                assert result["rows"] == rows
                runs[rows].append(result)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    peak = {rows: median([r["peak_rss_mb"] for r in rs]) for rows, rs in runs.items()}
    reader = {rows: median([r["reader_peak_mb"] for r in rs]) for rows, rs in runs.items()}
    host = {rows: median([r["host_peak_mb"] for r in rs]) for rows, rs in runs.items()}
    secs = {rows: median([r["seconds"] for r in rs]) for rows, rs in runs.items()}
    ratio = peak[args.large] / peak[args.small]
    print_table(
        f"Peak RSS of scoring: {args.features} features, K={len(specs)} ({args.lgbm} "
        f"LightGBM), batch {args.batch_rows:,} rows, median of {args.repeat}",
        ["rows", "reader MB", "host MB", "sum MB", "seconds", "rows/s"],
        [
            [f"{rows:,}", reader[rows], host[rows], peak[rows], secs[rows], rows / secs[rows]]
            for rows in runs
        ],
    )
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            target_row("peak RSS large / small (reader + host)", ratio, "<=", TARGET),
            target_row("reader alone", reader[args.large] / reader[args.small], "<=", TARGET),
            target_row("host alone", host[args.large] / host[args.small], "<=", TARGET),
        ],
    )
    result = {
        "params": vars(args)
        | {
            "out": str(args.out) if args.out else None,
            "data": str(args.data) if args.data else None,
        },
        "runs": {str(k): v for k, v in runs.items()},
        "peak_rss_mb": {str(k): v for k, v in peak.items()},
        "seconds": {str(k): v for k, v in secs.items()},
        "ratio": ratio,
        "target": TARGET,
        "met": ratio <= TARGET,
    }
    write_result("memory_flat", result, args.out)
    return result


if __name__ == "__main__":
    main()
