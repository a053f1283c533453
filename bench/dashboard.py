"""Model list and dashboard pages (100 rows a page, first and tenth) with 1,000 models and 365 days
of runs and DQ each, served by a real daemon on 127.0.0.1 (target: <= 300 ms server time).

    python -m bench.dashboard [--models 1000] [--days 365] [--repeat 10] [--data DIR]

Writing the registry (365,000 runs and DQ results with real ~2 KB details) takes a few minutes
and about 1.6 GB of SQLite; --data DIR keeps it for the next run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.perf_common import (
    median,
    percentile,
    print_table,
    target_row,
    write_features,
    write_result,
)
from bench.perf_daemon import BenchDaemon, NotFoundError, settings_of, timed_get, write_config
from bench.perf_registry import populate

TARGET_S = 0.300
PATHS = [
    ("api", "/api/v1/models"),
    ("page", "/"),
    ("page", "/models"),
    ("page", "/models?page=10"),
    ("page", "/dashboard"),
    ("page", "/dashboard?sort=psi&page=10"),
]


def changed(home: Path) -> None:
    """Commit a change to the registry, as a run's progress does: lists are read afresh
    (mldropd reuses a list only while the database's data version stays the same)."""
    with sqlite3.connect(home / "mldropd.db") as con:
        (version,) = con.execute("PRAGMA user_version").fetchone()
        con.execute(f"PRAGMA user_version = {int(version) + 1}")


def prepare(home: Path, models: int, days: int, due: int) -> str:
    """A daemon home with the registry written; returns the admin's token."""
    from mldropd.db import init_db, make_engine

    write_config(home)
    settings = settings_of(home)
    today = dt.datetime.now(dt.UTC).date()
    write_features(Path(settings.features.path), 1000, 5, day=today)
    engine = make_engine(settings.database.path)
    init_db(engine)
    registry = populate(engine, models=models, days=days, due=due, day=today)
    engine.dispose()
    (home / "admin.token").write_text(registry.admin_token)
    return registry.admin_token


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--due", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument(
        "--data",
        type=Path,
        default=None,
        help="keep the daemon home (registry) here and reuse it on the next run",
    )
    ap.add_argument("--timeout", type=float, default=60, help="seconds a request may take")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    home = args.data or tmp / "home"
    times: dict[str, list[float]] = {}
    reused: dict[str, list[float]] = {}
    missing: list[str] = []
    timed_out: list[str] = []
    setup = 0.0
    try:
        if (home / "admin.token").exists():
            write_config(home)  # a new free port; the registry stays
            token = (home / "admin.token").read_text()
        else:
            started = time.perf_counter()
            token = prepare(home, args.models, args.days, args.due)
            setup = time.perf_counter() - started
        listed = 0
        todo = list(PATHS)
        while todo:
            with BenchDaemon(home) as daemon:
                while todo:
                    kind, path = todo.pop(0)
                    client = (daemon.api if kind == "api" else daemon.pages)(token, args.timeout)
                    try:  # the first request also warms templates, caches and the page cache
                        warm = timed_get(client, path)
                        repeat = args.repeat if warm < 2 else min(args.repeat, 3)  # slow: fewer
                        times[path] = []
                        for _ in range(repeat):  # after a commit: the list is read afresh
                            changed(home)
                            times[path].append(timed_get(client, path))
                        reused[path] = [timed_get(client, path) for _ in range(repeat)]
                        if kind == "api":
                            listed = len(client.get(path).json())
                    except NotFoundError:  # page not built (yet)
                        missing.append(path)
                        continue
                    except httpx.TimeoutException:
                        timed_out.append(path)
                        print(f"GET {path}: no answer within {args.timeout:.0f} s", flush=True)
                        break  # a new daemon: the page still computing must not slow the next
                    finally:
                        client.close()
                    print(f"GET {path}: median {median(times[path]):.3f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        [path, median(t) * 1000, percentile(t, 95) * 1000, median(reused[path]) * 1000]
        for path, t in times.items()
    ]
    print_table(
        f"Model list and dashboard: {args.models:,} models x {args.days} days of runs and DQ, "
        f"admin (sees all {listed:,}), real daemon, median of {args.repeat}",
        ["GET", "median ms", "p95 ms", "unchanged db, ms"],
        rows,
    )
    if missing:
        print(f"not measured (404, page does not exist): {', '.join(missing)}")
    if timed_out:
        print(f"MISSED: no answer within {args.timeout:.0f} s: {', '.join(timed_out)}")
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [target_row(f"{p} seconds", median(t), "<=", TARGET_S) for p, t in times.items()],
    )
    result = {
        "params": vars(args)
        | {
            "out": str(args.out) if args.out else None,
            "data": str(args.data) if args.data else None,
        },
        "setup_s": setup,
        "listed": listed,
        "seconds": times,
        "reused_s": reused,
        "missing": missing,
        "timed_out": timed_out,
        "median_s": {p: median(t) for p, t in times.items()},
        "target_s": TARGET_S,
        "met": not timed_out and all(median(t) <= TARGET_S for t in times.values()),
    }
    write_result("dashboard", result, args.out)
    return result


if __name__ == "__main__":
    main()
