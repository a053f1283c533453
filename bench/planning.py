"""Sweep planning at scale: 1,000 registered models, 200 of them due, each with a history of
daily runs; time due_models + plan_batch on a real SQLite file (target: <= 1 s).

    python -m bench.planning [--models 1000] [--due 200] [--days 90] [--repeat 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlmodel import Session

from bench.perf_common import median, percentile, print_table, target_row, write_result
from bench.perf_registry import populate

TARGET_S = 1.0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--due", type=int, default=200)
    ap.add_argument("--days", type=int, default=90, help="days of run history per model")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    from mldropd.batch.plan import due_models, plan_batch
    from mldropd.db import init_db, make_engine
    from mldropd.states import Trigger

    tmp = Path(tempfile.mkdtemp(prefix="bench-plan-"))
    day = dt.date(2026, 1, 14)  # a Wednesday
    try:
        engine = make_engine(tmp / "mldropd.db")
        init_db(engine)
        started = time.perf_counter()
        populate(engine, models=args.models, days=args.days, due=args.due, day=day, dq=False)
        setup = time.perf_counter() - started
        due_s, plan_s, total_s = [], [], []
        planned = 0
        for _ in range(args.repeat):
            with Session(engine) as s:
                t0 = time.perf_counter()
                models = due_models(s, day)
                t1 = time.perf_counter()
                batch, covered = plan_batch(s, day, Trigger.SCHEDULE, models)
                t2 = time.perf_counter()
                s.rollback()  # the next repeat plans the same sweep again
            due_s.append(t1 - t0)
            plan_s.append(t2 - t1)
            total_s.append(t2 - t0)
            planned = len(covered)
            assert batch is not None and len(models) == args.due, (len(models), args.due)
        engine.dispose()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    total = median(total_s)
    print_table(
        f"Sweep planning: {args.models:,} models ({args.due} due), {args.days} days of runs "
        f"each, median of {args.repeat}",
        ["step", "median s", "p95 s"],
        [
            ["due_models (which models are due)", median(due_s), percentile(due_s, 95)],
            ["plan_batch (pending runs, attempts)", median(plan_s), percentile(plan_s, 95)],
            ["sweep planning total", total, percentile(total_s, 95)],
        ],
    )
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [target_row("planning seconds", total, "<=", TARGET_S)],
    )
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "setup_s": setup,
        "due_models_s": due_s,
        "plan_batch_s": plan_s,
        "total_s": total_s,
        "planned_runs": planned,
        "seconds": total,
        "target_s": TARGET_S,
        "met": total <= TARGET_S,
    }
    write_result("planning", result, args.out)
    return result


if __name__ == "__main__":
    main()
