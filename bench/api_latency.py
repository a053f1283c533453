"""API latency under a running batch: p99 of GET /api/v1/models with 20 concurrent clients while
a 1M-row batch scores, against the same load on an idle daemon (target: ratio <= 2 and
p99 <= 100 ms). A real daemon on 127.0.0.1; models uploaded through the API.

    python -m bench.api_latency [--rows 1000000] [--clients 20] [--requests 25]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.perf_common import (
    median,
    mixed_specs,
    percentile,
    print_table,
    save_models,
    target_row,
    write_features,
    write_result,
)
from bench.perf_daemon import BenchDaemon, settings_of, write_config
from bench.perf_registry import populate

TARGET_RATIO = 2.0
TARGET_P99_S = 0.100


def load(url: str, token: str, clients: int, requests: int) -> list[float]:
    """`clients` threads, each with its own keep-alive connection, `requests` GETs each."""
    host, port = url.removeprefix("http://").split(":")
    out: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        mine = []
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("GET", "/api/v1/models", headers={"Authorization": f"Bearer {token}"})
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                errors.append(f"{response.status}")
        conn.close()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return out


def statuses(api: Any, run_ids: list[int]) -> list[str]:
    return [api.get(f"/api/v1/runs/{r}").json()["status"] for r in run_ids]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table and write the JSON result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=50)
    ap.add_argument("--models", type=int, default=2, help="models uploaded and scored")
    ap.add_argument("--lgbm", type=int, default=1)
    ap.add_argument(
        "--listed",
        type=int,
        default=50,
        help="models of other users, which only the admin's list shows",
    )
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=25, help="requests per client per phase")
    ap.add_argument("--repeat", type=int, default=2, help="idle and busy phases, interleaved")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    lat: dict[str, list[float]] = {
        f"{w}/{s}": [] for w in ("owner", "admin") for s in ("idle", "busy")
    }
    overlapped: list[bool] = []
    try:
        home = tmp / "home"
        write_config(home)
        settings = settings_of(home)
        day = dt.datetime.now(dt.UTC).date()
        write_features(Path(settings.features.path), args.rows, args.features, day=day)
        engine = make_engine(settings.database.path)
        init_db(engine)
        tokens = {
            "admin": populate(engine, models=args.listed, days=30, due=0, day=day).admin_token,
            "owner": create_user(engine, "owner@example.com")[1],
        }
        engine.dispose()
        specs = mixed_specs(args.features, args.models, args.lgbm)
        paths = save_models(tmp / "models", specs, args.features, args.rows)
        with BenchDaemon(home) as daemon, daemon.api(tokens["owner"]) as api:
            ids = []
            for path in paths:
                with open(path, "rb") as f:
                    response = api.post("/api/v1/models", files={"file": (path.name, f)})
                if response.status_code != 201:
                    raise RuntimeError(f"upload failed: {response.text[:500]}")
                ids.append(response.json()["id"])
            load(daemon.url, tokens["admin"], 2, 5)  # warm
            for _ in range(args.repeat):
                for who, token in tokens.items():
                    lat[f"{who}/idle"] += load(daemon.url, token, args.clients, args.requests)
                run_ids = [
                    api.post(f"/api/v1/models/{m}/runs", json={"date": day.isoformat()}).json()[
                        "run_id"
                    ]
                    for m in ids
                ]
                deadline = time.monotonic() + 120
                # Started (or, at tiny sizes, perhaps already done: then no overlap is recorded).
                while set(statuses(api, run_ids)) == {"pending"}:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the batch did not start: {daemon.log_tail()}")
                    time.sleep(0.2)
                for who, token in tokens.items():
                    lat[f"{who}/busy"] += load(daemon.url, token, args.clients, args.requests)
                overlapped.append(bool({"pending", "running"} & set(statuses(api, run_ids))))
                deadline = time.monotonic() + 900
                while {"pending", "running"} & set(statuses(api, run_ids)):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the batch did not finish within 15 minutes")
                    time.sleep(0.5)
            failed = [r for r in api.get("/api/v1/runs").json() if r["status"] == "failed"]
            if failed:
                raise RuntimeError(f"a benchmark run failed: {failed[0]['error']}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    p99 = {k: percentile(v, 99) for k, v in lat.items()}
    ratio = {w: p99[f"{w}/busy"] / p99[f"{w}/idle"] for w in ("owner", "admin")}
    listed = {"owner": args.models, "admin": args.models + args.listed}
    print_table(
        f"GET /api/v1/models, {args.clients} concurrent clients x {args.requests} requests, "
        f"{args.repeat} phases each; batch: {args.rows:,} rows x {args.features} features, "
        f"{args.models} models",
        ["caller (models listed), daemon", "requests", "median ms", "p95 ms", "p99 ms"],
        [
            [
                f"{k.split('/')[0]} ({listed[k.split('/')[0]]}), {k.split('/')[1]}",
                len(v),
                median(v) * 1000,
                percentile(v, 95) * 1000,
                p99[k] * 1000,
            ]
            for k, v in lat.items()
        ],
    )
    print(f"batch still running when each busy phase ended: {overlapped}")
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            row
            for w in ("owner", "admin")
            for row in (
                target_row(f"{w}: p99 busy / idle", ratio[w], "<=", TARGET_RATIO),
                target_row(f"{w}: p99 busy seconds", p99[f"{w}/busy"], "<=", TARGET_P99_S),
            )
        ],
    )
    met = {
        w: ratio[w] <= TARGET_RATIO and p99[f"{w}/busy"] <= TARGET_P99_S for w in ("owner", "admin")
    }
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "latency_s": lat,
        "p99_s": p99,
        "ratio": ratio,
        "listed": listed,
        "batch_overlapped": overlapped,
        "target_ratio": TARGET_RATIO,
        "target_p99_s": TARGET_P99_S,
        "met": met,
        "all_overlapped": all(overlapped),
    }
    write_result("api_latency", result, args.out)
    return result


if __name__ == "__main__":
    main()
