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
            read of each date's union columns plus the models' raw predict, measured here);
  daemon    as "one", through a running daemon (`mldropd serve`): "Run now" through the API to
            the run's end as the API shows it; the batch job is forked from the daemon's fork
            server (no interpreter start, no import but Polars').
Phases, from the JSON log (PHASES; each ends where the next begins, so they add up to the wall
time): start (process start to the planned run: interpreter, the CLI's imports, the database,
planning), fork (to "batch started": the batch job forked from the command's fork server once
that has imported the job's libraries, claiming the batch), prepare (to "scoring with": the
models' files, the table's first read, the key check, the DQ's imports), scoring (read, score,
write, to "local engine"), DQ (to the last "model run succeeded"), report (the owners' mails,
the outcome) and exit (from "daemon stopped" to the process's end).
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


def _register(home: Path, paths: list[Path]) -> tuple[list[int], str]:
    """Register model files as an admin would (validated in the sandbox); the ids, the token."""
    from mldropd.auth import create_user
    from mldropd.daemon import Daemon
    from mldropd.intake import UploadForm, register_file
    from mldropd.settings import load_settings

    settings = load_settings(home / "config.toml", env={})
    daemon = Daemon(settings, with_scheduler=False)
    user, token = create_user(daemon.engine, "bench@example.com", admin=True)
    ids = []
    for path in paths:
        model, _ = register_file(daemon.engine, daemon.store, settings, user, path,
                                   UploadForm(filename=path.name), daemon.sandboxes())  # fmt: skip
        ids.append(int(model.id or 0))
    daemon.stop()
    return ids, token


def logged_run(
    home: Path, args: list[str], timeout: float | None = None
) -> tuple[float, float, list[dict[str, Any]]]:
    """One `mldropd run` in a fresh process: (start, end, the events of its JSON log)."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "mldropd", "run", *args, "--config", str(home / "config.toml")],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"mldropd run failed: {done.stdout[-1500:]} {done.stderr[-3000:]}")
    return started, ended, _json_events(done.stderr + done.stdout)


def event_time(events: list[dict[str, Any]], fragment: str, last: bool = False) -> float | None:
    """The time (epoch seconds) of the first (or last) event whose message has `fragment`."""
    hits = [e for e in events if fragment in str(e.get("event", ""))]
    if not hits:
        return None
    stamp = hits[-1 if last else 0]["ts"]
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _run(home: Path, args: list[str]) -> dict[str, Any]:
    """One `mldropd run`: wall time and the phases from its JSON log."""
    started, ended, events = logged_run(home, args)
    wall: dict[str, float | None] = {"wall_s": ended - started}
    return wall | phases(events, started, ended, PHASES)


# (phase, the log event that ends it, its last occurrence rather than its first); the last
# phase, exit, ends with the process (the daemon: when the API shows the run ended).
PHASES = [
    ("start", "run.request", False),
    ("fork", "batch started", False),
    ("prepare", "scoring with", False),
    ("scoring", "local engine:", True),
    ("dq", "model run succeeded", True),
    ("report", "daemon stopped", True),
]
DAEMON_PHASES = [*PHASES[:5], ("report", "batch succeeded", True)]


def phases(
    events: list[dict[str, Any]],
    started: float,
    ended: float,
    marks: list[tuple[str, str, bool]],
) -> dict[str, float | None]:
    """Seconds of each phase, "<phase>_s"; a phase whose end is not in the log is None and its
    time goes to the next phase, so that the phases always add up to ended - started."""
    out: dict[str, float | None] = {}
    mark = started
    for name, fragment, last in marks:
        end = event_time(events, fragment, last)
        out[f"{name}_s"] = None if end is None else max(0.0, end - mark)
        mark = mark if end is None else max(mark, end)
    out["exit_s"] = max(0.0, ended - mark)
    return out


def _json_events(text: str, since: float = 0.0) -> list[dict[str, Any]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                event = json.loads(line)
                stamp = dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError):
                continue
            if stamp >= since:
                events.append(event)
    return events


def _daemon_runs(
    home: Path, model_id: int, token: str, days: list[dt.date]
) -> list[dict[str, Any]]:
    """Start `mldropd serve`, then per day: "Run now" through the API, timed to the run's end as
    the API shows it, with the phases from the daemon's JSON log."""
    import httpx

    log_path = home / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "mldropd", "serve", "--config", str(home / "config.toml")],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = "http://127.0.0.1:18999"
    runs = []
    try:
        deadline = time.monotonic() + 180
        while "daemon started" not in log_path.read_text():
            if serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mldropd serve did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(2.0)  # the catch-up sweep (nothing due) and the first requests settle
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})
        for day in days:
            started = time.time()
            answer = client.post(f"/api/v1/models/{model_id}/runs", json={"date": day.isoformat()})
            answer.raise_for_status()
            run_id = answer.json()["run_id"]
            while True:
                status = client.get(f"/api/v1/runs/{run_id}").json()["status"]
                if status in ("succeeded", "failed"):
                    break
                time.sleep(0.02)
            ended = time.time()
            if status != "succeeded":
                raise RuntimeError(f"the daemon's run of {day} {status}")
            time.sleep(0.5)  # the last lines of the job's log reach the daemon's
            events = _json_events(log_path.read_text(), since=started)
            wall: dict[str, float | None] = {"wall_s": ended - started}
            runs.append(wall | phases(events, started, ended, DAEMON_PHASES))
    finally:
        serve.terminate()
        serve.wait(timeout=60)
    return runs


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

    if name in ("one", "small", "daemon"):
        days = [DAY - dt.timedelta(days=i) for i in range(repeat + 1)][::-1]
        home = _home(tmp / name, days, 100_000, 40)
        demo = make_demo_models(tmp / name / "models", 40, "bench@example.com", n_rows=20_000)
        paths = demo if name == "small" else demo[:1]
    elif name == "k5":
        days = [DAY - dt.timedelta(days=i) for i in range(repeat + 1)][::-1]
        home = _home(tmp / name, days, 1_000_000, 50)
        paths = save_models(tmp / name / "models", linear_specs(50, 5), 50)
    else:  # backfill
        days = [DAY - dt.timedelta(days=i) for i in range(30)][::-1]
        home = _home(tmp / name, days, 100_000, 40)
        paths = make_demo_models(tmp / name / "models", 40, "bench@example.com", n_rows=20_000)
    ids, token = _register(home, paths)
    models = [arg for i in ids for arg in ("--model", str(i))]
    runs = []
    if name == "daemon":  # newest first, as "one": no reference day
        runs = _daemon_runs(home, ids[0], token, days[::-1][:repeat])
        for run, day in zip(runs, days[::-1], strict=False):
            run["raw_s"] = _raw(home, paths, [day])
    elif name == "backfill":
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

        rows.append([name, res["models"], res["dates"], med("wall_s"),
                     *[med(f"{p}_s") for p, _, _ in PHASES], med("exit_s"),
                     med("raw_s")])  # fmt: skip
        if name in ("one", "daemon"):
            less = med("wall_s") - med("scoring_s")
            targets.append(target_row(f"{name}: wall - scoring (s)", less, "<=", 3.0))
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
        ["case", "models", "dates", "wall s", *[f"{p} s" for p, _, _ in PHASES], "exit s",
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
