"""The static scan's cost: linear in the file size, and harmless to page latency.

1. Linearity: the adversarial shapes of issue 15 (N*k + "(t0" repeated, which took the old
   scan about an hour per MB; a memo entry per 3 bytes) at 1 MB and 10 MB, scanned side by
   side: the time ratio should be about 10 (the old scan's was about 100).
2. Page p99 while four adversarial uploads are scanned, on a real daemon: the scan in a child
   process (what mldropd does) against the same four scans in threads of the daemon process
   (what scanning in a worker thread would do), and against an idle daemon.

    python -m bench.scan_cost [--mb 1 10] [--clients 8] [--requests 40]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.perf_common import median, percentile, print_table, target_row, write_result
from bench.perf_daemon import BenchDaemon, write_config
from tests.support.pickle_corpus import many_memo_entries, quadratic_marks

MB = 1 << 20
SHAPES = {"N*k + (t0": quadratic_marks, "memo per 3 bytes": many_memo_entries}


def linearity(sizes_mb: list[int], repeat: int) -> dict[str, dict[int, float]]:
    from mldropd.pickle_scan import scan_bytes

    out: dict[str, dict[int, float]] = {}
    for shape, make in SHAPES.items():
        out[shape] = {}
        for size in sizes_mb:
            data = make(size * MB)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                scan_bytes(data, budget_s=3600)
                times.append(time.perf_counter() - started)
            out[shape][size] = min(times)
    return out


def page_load(url: str, token: str, clients: int, requests: int) -> list[float]:
    """`clients` threads, each signed in, GET / (the deploy page) `requests` times."""
    out: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            http.post("/login", data={"token": token}, headers={"x-csrftoken": _csrf(http)})
            mine = []
            for _ in range(requests):
                started = time.perf_counter()
                response = http.get("/")
                mine.append(time.perf_counter() - started)
                response.raise_for_status()
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _csrf(http: httpx.Client) -> str:
    http.get("/login")
    return str(http.cookies["csrftoken"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs=2, default=[1, 10], help="the two sizes compared")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--uploads", type=int, default=4)
    ap.add_argument("--upload-mb", type=int, default=8, help="size of each adversarial upload")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    times = linearity(args.mb, args.repeat)
    small, large = args.mb
    ratios = {shape: t[large] / t[small] for shape, t in times.items()}
    print_table(
        f"Scan time of adversarial files, best of {args.repeat}",
        ["shape", f"{small} MB s", f"{large} MB s", "s per MB", "ratio", "sizes ratio"],
        [
            [s, t[small], t[large], t[large] / large, ratios[s], large / small]
            for s, t in times.items()
        ],
    )

    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine

    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-"))
    lat: dict[str, list[float]] = {
        "idle": [],
        "scans in child processes": [],
        "scans in threads": [],
    }
    try:
        home = tmp / "home"
        config = write_config(home)
        # Four sandboxes must fit in memory (validation_slots.check_memory): 4 x 4096 MB.
        config.write_text(
            config.read_text().replace("model_memory_mb = 8192", "model_memory_mb = 4096")
        )
        with open(config, "a") as f:  # every upload scans at once; long budget
            f.write(f"[limits]\nconcurrent_validations = {args.uploads}\nscan_timeout_s = 600\n")
        (home / "features").mkdir()
        adversarial = tmp / "adversarial.dill"
        adversarial.write_bytes(quadratic_marks(args.upload_mb * MB))
        with BenchDaemon(home) as daemon:
            engine = make_engine(home / "mldropd.db")
            init_db(engine)
            token = create_user(engine, "owner@example.com")[1]
            engine.dispose()
            page_load(daemon.url, token, 2, 5)  # warm
            lat["idle"] = page_load(daemon.url, token, args.clients, args.requests)

            def send() -> None:
                with open(adversarial, "rb") as f:
                    httpx.post(
                        f"{daemon.url}/api/v1/models",
                        headers={"Authorization": f"Bearer {token}"},
                        files={"file": ("adversarial.dill", f)},
                        timeout=900,
                    )

            uploads = [threading.Thread(target=send) for _ in range(args.uploads)]
            for t in uploads:
                t.start()
            time.sleep(1.0)  # the bodies are in; the scans run
            lat["scans in child processes"] = page_load(
                daemon.url, token, args.clients, args.requests
            )
            for t in uploads:
                t.join()
        # The same four scans in threads of a daemon process (as a worker thread would run them).
        lat["scans in threads"] = _threads_in_server(tmp, adversarial, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    p99 = {k: percentile(v, 99) for k, v in lat.items()}
    print_table(
        f"GET / (deploy page), {args.clients} clients x {args.requests} requests, during "
        f"{args.uploads} uploads of a {args.upload_mb} MB adversarial file",
        ["daemon", "requests", "median ms", "p99 ms"],
        [[k, len(v), median(v) * 1000, p99[k] * 1000] for k, v in lat.items()],
    )
    print_table(
        "Target",
        ["measure", "value", "target", ""],
        [
            *(
                target_row(f"scan ratio {large}/{small} MB: {s}", r, "<=", 1.5 * large / small)
                for s, r in ratios.items()
            ),  # fmt: skip
            target_row(
                "p99 child scans / idle", p99["scans in child processes"] / p99["idle"], "<=", 2.0
            ),
        ],
    )
    result = {
        "params": vars(args) | {"out": str(args.out) if args.out else None},
        "scan_s": {s: {str(k): v for k, v in t.items()} for s, t in times.items()},
        "ratio": ratios,
        "latency_s": lat,
        "p99_s": p99,
    }
    write_result("scan_cost", result, args.out)
    return result


def _threads_in_server(tmp: Path, adversarial: Path, args: argparse.Namespace) -> list[float]:
    """A daemon whose process also runs the scans in threads (as a worker thread would)."""
    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine

    home = tmp / "home-threads"
    write_config(home)
    (home / "features").mkdir()
    runner = home / "serve_with_scans.py"
    runner.write_text(_SERVE_WITH_SCANS)
    engine = make_engine(home / "mldropd.db")
    init_db(engine)
    token = create_user(engine, "owner@example.com")[1]
    engine.dispose()
    proc = subprocess.Popen(
        [
            sys.executable,
            str(runner),
            str(home / "config.toml"),
            str(adversarial),
            str(args.uploads),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # "http://127.0.0.1:PORT" once serving
        page_load(url, token, 2, 5)
        proc.stdout.readline()  # "scanning"
        return page_load(url, token, args.clients, args.requests)
    finally:
        proc.kill()
        proc.wait(timeout=30)


_SERVE_WITH_SCANS = r"""
import sys, threading, time, httpx, uvicorn
from mldropd.app import create_app
from mldropd.pickle_scan import scan_pickle
from mldropd.settings import load_settings

settings = load_settings(sys.argv[1], env={})
server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1",
                                       port=settings.server.port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
url = f"http://127.0.0.1:{settings.server.port}"
while True:
    try:
        httpx.get(url + "/healthz", timeout=1); break
    except httpx.HTTPError:
        time.sleep(0.2)
print(url, flush=True)
time.sleep(3)  # the warm-up requests
for _ in range(int(sys.argv[3])):
    threading.Thread(target=scan_pickle, args=(sys.argv[2], 3600), daemon=True).start()
print("scanning", flush=True)
time.sleep(3600)
"""


if __name__ == "__main__":
    main()
