"""End to end, as a user waits for it: `mldropd run` wall time with its phase breakdown (from
the JSON log), against the scoring work itself, for the cases of issue 19.

    python -m bench.e2e [--cases one,small,k5,backfill] [--repeat 3]

Cases (each a fresh home made by mldropd's own commands: users add, the API-free registry,
then `mldropd run`):
  one       one LightGBM model, 100k rows x 40 features, no reference day (target: wall within
            3 s + its scoring time);
  small     the two demo models, 100k x 40, with a reference day;
  k5        five linear models, 1M rows x 50 features, with a reference day (DQ at most 1 s a
            model, and the DQ of the batch at most its scoring time);
  backfill  30 dates x 100k x 2 models with --from/--to (target: within 10x the raw work: one
            read of each date's union columns plus the models' raw predict, measured here).
Phases: start (process start to "batch started"), scoring ("scoring with" to "local engine"),
DQ (to the last "model run succeeded"), report and exit (to the process's end).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.perf_common import median, print_table, target_row, write_result

DAY = dt.date(2026, 1, 30)


def _home(root: Path, days: list[dt.date], rows: int, n_features: int) -> Path:
    from mldropd.demo import write_features

    home = root / "home"
    home.mkdir(parents=True)
    write_features(home / "features", days, rows, n_features)
    (home / "config.toml").write_text(
        '[server]\nport = 18999\nlog_format = "json"\n[features]\npath = "features"\n'
        "max_staleness_days = 0\n[sandbox]\nrequire = []\n"
    )
    return home


def _register(home: Path, paths: list[Path]) -> list[int]:
    """Register model files as an admin would (validated in the sandbox)."""
    from mldropd.auth import create_user
    from mldropd.daemon import Daemon
    from mldropd.intake import UploadForm, register_file
    from mldropd.settings import load_settings

    settings = load_settings(home / "config.toml", env={})
    daemon = Daemon(settings, with_scheduler=False)
    user, _ = create_user(daemon.engine, "bench@example.com", admin=True)
    ids = []
    for path in paths:
        model, _ = register_file(daemon.engine, daemon.store, settings, user, path,
                                   UploadForm(filename=path.name), daemon.sandboxes())  # fmt: skip
        ids.append(int(model.id or 0))
    daemon.stop()
    return ids


def _run(home: Path, args: list[str]) -> dict[str, Any]:
    """One `mldropd run`: wall time and the phases from its JSON log."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "mldropd", "run", *args, "--config", str(home / "config.toml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"mldropd run failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
    events = []
    for line in (done.stderr + done.stdout).splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue

    def at(fragment: str, last: bool = False) -> float | None:
        hits = [e for e in events if fragment in str(e.get("event", ""))]
        if not hits:
            return None
        stamp = hits[-1 if last else 0]["ts"]
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    batch = at("batch started")
    scoring, scored = at("scoring with"), at("local engine:", last=True)
    finished = at("model run succeeded", last=True)
    return {
        "wall_s": ended - started,
        "start_s": (batch or ended) - started,
        "scoring_s": (scored - scoring) if scoring and scored else None,
        "dq_s": (finished - scored) if finished and scored else None,
        "after_s": ended - (finished or ended),
    }


def _raw(home: Path, paths: list[Path], days: list[dt.date]) -> float:
    """The raw work: each date's union columns read once, each model's raw predict on them."""
    import dill
    import pyarrow.parquet as pq

    from mldropd.modelcall import predict, to_input

    models = []
    for path in paths:
        with open(path, "rb") as f:
            obj = dill.load(f)
        call = "predict_proba" if hasattr(obj["pipeline"], "predict_proba") else "callable"
        models.append((obj["pipeline"], obj["features"], call))
    columns = list(dict.fromkeys(c for _, f, _ in models for c in f))
    started = time.perf_counter()
    for day in days:
        table = pq.read_table(home / "features" / f"dt={day.isoformat()}", columns=columns)
        for pipeline, features, call in models:
            predict(pipeline, to_input(table, features, "pandas"), call, "proba")
    return time.perf_counter() - started


def case(name: str, tmp: Path, repeat: int) -> dict[str, Any]:
    """Build the case's home, run it `repeat` times (fresh dates each time) and measure."""
    from bench.perf_common import linear_specs, save_models
    from mldropd.demo import make_demo_models

    if name in ("one", "small"):
        days = [DAY - dt.timedelta(days=i) for i in range(repeat + 1)][::-1]
        home = _home(tmp / name, days, 100_000, 40)
        demo = make_demo_models(tmp / name / "models", 40, "bench@example.com", n_rows=20_000)
        paths = demo[:1] if name == "one" else demo
    elif name == "k5":
        days = [DAY - dt.timedelta(days=i) for i in range(repeat + 1)][::-1]
        home = _home(tmp / name, days, 1_000_000, 50)
        paths = save_models(tmp / name / "models", linear_specs(50, 5), 50)
    else:  # backfill
        days = [DAY - dt.timedelta(days=i) for i in range(30)][::-1]
        home = _home(tmp / name, days, 100_000, 40)
        paths = make_demo_models(tmp / name / "models", 40, "bench@example.com", n_rows=20_000)
    ids = _register(home, paths)
    models = [arg for i in ids for arg in ("--model", str(i))]
    runs = []
    if name == "backfill":
        for _ in range(repeat):  # --model forces the range to be scored again each time
            args = ["--from", days[0].isoformat(), "--to", days[-1].isoformat(), *models]
            runs.append(_run(home, args) | {"raw_s": _raw(home, paths, days)})
    else:
        if name != "one":  # a reference day first: DQ then compares two partitions
            _run(home, ["--date", days[0].isoformat(), *models])
        for i in range(repeat):
            # "one" scores newest first: no earlier partition, so no reference day
            day = days[i + 1] if name != "one" else days[-(i + 1)]
            runs.append(_run(home, ["--date", day.isoformat(), *models]))
            runs[-1]["raw_s"] = _raw(home, paths, [day])
    return {"models": len(ids), "dates": len(days) if name == "backfill" else 1, "runs": runs}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="one,small,k5,backfill")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    results: dict[str, Any] = {}
    try:
        for name in args.cases.split(","):
            results[name] = case(name, tmp, args.repeat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, targets = [], []
    for name, res in results.items():
        runs = res["runs"]

        def med(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return median([r[key] for r in runs if r.get(key) is not None] or [0.0])

        rows.append([name, res["models"], res["dates"], med("wall_s"), med("start_s"),
                     med("scoring_s"), med("dq_s"), med("after_s"), med("raw_s")])  # fmt: skip
        if name == "one":
            targets.append(target_row("one: wall - scoring (s)", med("wall_s") - med("scoring_s"),
                                      "<=", 3.0))  # fmt: skip
        if name == "k5":
            targets.append(target_row("k5: DQ s per model", med("dq_s") / res["models"], "<=", 1.0))
            targets.append(
                target_row("k5: DQ / scoring", med("dq_s") / med("scoring_s"), "<=", 1.0)
            )
        if name == "backfill":
            targets.append(target_row("backfill: wall / raw", med("wall_s") / med("raw_s"), "<=",
                                      10.0))  # fmt: skip
    print_table(
        f"mldropd run end to end, median of {args.repeat}",
        ["case", "models", "dates", "wall s", "start s", "scoring s", "DQ s", "report+exit s",
         "raw work s"],
        rows,
    )  # fmt: skip
    print_table("Targets", ["measure", "value", "target", ""], targets)
    result = {"params": vars(args) | {"out": str(args.out) if args.out else None},
              "cases": results, "targets": targets}  # fmt: skip
    write_result("e2e", result, args.out)
    return result


if __name__ == "__main__":
    main()
