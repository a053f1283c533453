"""What recording progress costs a scoring pass: the local engine with the progress recorder
(mldropd.batch.progress, writing to a real SQLite registry) against the same pass without it,
side by side, and the time of one progress write.

Small batches make it the worst case: a progress callback after every batch. On shared cores
the wall time of a pass drifts by more than the whole cost, so the target is the recorder's
share of the pass: its writes times the time of one write, over the pass's time (<= 1%); the
wall and this process's CPU time (the trusted reader, writer and recorder) with and without it
are reported beside it.

    python -m bench.progress_cost [--rows 500000] [--features 10] [--models 20]
                                  [--batch-rows 2000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.perf_common import (
    DAY,
    feature_settings,
    linear_specs,
    median,
    print_table,
    save_models,
    start_sandboxes,
    target_row,
    task_dicts,
    write_features,
    write_result,
)

TARGET = 0.01


def _registry(path: Path, runs: int) -> tuple[Any, int]:
    """A registry with one running batch of `runs` running model runs (ids 1..runs)."""
    from sqlmodel import Session

    from mldropd.db import init_db, make_engine
    from mldropd.records import BatchRun, Model, ModelRun, User

    db = make_engine(path)
    init_db(db)
    with Session(db) as s:
        user = User(email="bench@example.com", token_hash="h")
        s.add(user)
        s.flush()
        batch = BatchRun(date=DAY, trigger="manual", status="running")
        s.add(batch)
        s.flush()
        for i in range(runs):
            model = Model(owner_id=user.id or 0, name=f"m{i}", email=user.email)
            s.add(model)
            s.flush()
            s.add(
                ModelRun(
                    id=i + 1,
                    batch_id=batch.id or 0,
                    model_id=model.id or 0,
                    model_version=1,
                    date=DAY,
                    trigger="manual",
                    status="running",
                )
            )
        s.commit()
        return db, batch.id or 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pass(
    root: Path, tasks: list[Any], batch_rows: int, engine: Any, progress: Any
) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) of one scoring pass."""
    from mldropd.engines.base import ScoringRequest

    request = ScoringRequest(
        feature_settings(root), DAY, batch_rows, dt.datetime.now(dt.UTC), tuple(tasks)
    )
    started, cpu = time.perf_counter(), _cpu()
    outcomes = engine.score(request, heartbeat=lambda: None, progress=progress)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    failed = [o.error for o in outcomes.values() if not o.ok]
    if failed:
        raise RuntimeError(f"a benchmark model failed: {failed[0]}")
    return seconds, cpu


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    from mldropd.batch.progress import BatchProgress
    from mldropd.engines.local import LocalEngine

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--features", type=int, default=10)
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--batch-rows", type=int, default=2_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--writes", type=int, default=200, help="progress writes timed alone")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-progress-"))
    times: dict[str, list[float]] = {"without": [], "with": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    writes: list[int] = []
    try:
        root = tmp / "features"
        write_features(root, args.rows, args.features)
        specs = linear_specs(args.features, args.models)
        tasks = task_dicts(save_models(tmp / "models", specs, args.features, args.rows), specs,
                           tmp / "scores")  # fmt: skip
        db, batch_id = _registry(tmp / "registry.db", len(tasks))
        sandboxes = start_sandboxes(tmp / "work")
        engine = LocalEngine(sandboxes, 8192, keep_hosts=True)  # hosts kept: passes compare
        _pass(root, tasks, args.batch_rows, engine, None)  # warm: hosts, imports, page cache
        for _ in range(args.repeat):  # alternated, so drift on shared cores hits both alike
            for kind in ("without", "with"):
                recorder = BatchProgress(db, batch_id) if kind == "with" else None
                seconds, used = _pass(root, tasks, args.batch_rows, engine, recorder)
                times[kind].append(seconds)
                cpu[kind].append(used)
                if recorder is not None:
                    writes.append(recorder.writes)
                    recorder.close()
        engine.close()
        sandboxes.stop()
        # One write alone: every model run's rows, the batch's phase, one transaction.
        recorder = BatchProgress(db, batch_id, interval_s=0.0)
        recorder.totals({t.model_run_id: args.rows for t in tasks})
        started = time.perf_counter()
        for step in range(1, args.writes + 1):
            recorder("scoring", {t.model_run_id: step * 10 for t in tasks})
        write_ms = (time.perf_counter() - started) / args.writes * 1000
        recorder.close()
        db.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ratios = [w / wo for w, wo in zip(times["with"], times["without"], strict=True)]
    cpu_ratios = [w / wo for w, wo in zip(cpu["with"], cpu["without"], strict=True)]
    share = median(writes) * write_ms / 1000 / median(times["with"])
    batches = -(-args.rows // args.batch_rows)
    print_table(
        f"Progress recording: {args.rows:,} rows x {args.features} features, {args.models} linear "
        f"models, {batches} batches of {args.batch_rows:,} rows, median of {args.repeat}",
        ["pass", "wall s", "with / without", "CPU s here", "with / without", "writes"],
        [
            ["without progress", median(times["without"]), "", median(cpu["without"]), "", 0],
            [
                "with progress",
                median(times["with"]),
                f"{median(ratios):.3f}x",
                median(cpu["with"]),
                f"{median(cpu_ratios):.3f}x",
                median(writes),
            ],
        ],
    )
    print_table(
        "One progress write",
        ["measure", "ms"],
        [[f"write of {args.models} model runs (one transaction)", write_ms]],
    )
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [target_row("writes x one write / pass (share of the pass)", share, "<=", TARGET)],
    )
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "seconds": times,
        "cpu_seconds": cpu,
        "writes": writes,
        "wall_ratios": ratios,
        "cpu_ratios": cpu_ratios,
        "write_ms": write_ms,
        "share": share,
        "target": TARGET,
        "met": share <= TARGET,
    }
    write_result("progress_cost", result, args.out)
    return result


if __name__ == "__main__":
    main()
