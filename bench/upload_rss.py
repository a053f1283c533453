"""How much memory the daemon takes to receive a large model upload with the S3 store.

Starts a moto S3 server (child process) and a real `mldropd serve` with storage.kind = "s3",
uploads a model file of --size-mb MB (a fitted LogisticRegression plus random bytes in `meta`)
through POST /api/v1/models, and reads the daemon's resident memory from /proc/<pid>/status:
the peak (VmHWM, reset with /proc/<pid>/clear_refs after a warm-up upload) and, sampled every
10 ms, its anonymous (heap) and file-backed parts. The validation child and the S3 server are
other processes and are not counted. Then it checks that the object in the bucket has the
uploaded file's size and sha256.

    .venv/bin/python bench/upload_rss.py [--size-mb 200] [--json results.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import dill
import httpx
import numpy as np
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mldropd.demo import feature_names, write_features  # noqa: E402

MB = 1024 * 1024
BUCKET = "models"
KEY = "bench"
N_FEATURES = 12

MOTO = r"""
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
[storage]
kind = "s3"
bucket = "{bucket}"
prefix = "mldropd"
endpoint_url = "{endpoint}"
access_key_file = "s3-access-key"
secret_key_file = "s3-secret-key"
[limits]
max_upload_mb = {limit}
[engine]
validate_timeout_s = 600
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def start_moto(log: Path) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    with open(log, "a") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", MOTO, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    if not ready or proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"moto server did not start; see {log}")
    return proc, f"http://127.0.0.1:{port}"


def s3_client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=KEY,
    )


def write_model(path: Path, size_mb: int) -> Path:
    """A valid model object whose file is size_mb MB: random (incompressible) bytes in meta."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, N_FEATURES))
    pipeline = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    blob = np.frombuffer(rng.bytes(size_mb * MB), dtype=np.uint8)
    obj = {"pipeline": pipeline, "features": feature_names(N_FEATURES), "meta": {"blob": blob}}
    with open(path, "wb") as f:
        dill.dump(obj, f, recurse=True)
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(MB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def status(pid: int) -> dict[str, int]:
    """Memory fields of /proc/<pid>/status, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[name] = int(value.split()[0])
    return fields


class Sampler:
    """Peak anonymous and file-backed RSS of a process, sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = status(self.pid)
            for key in self.peak:
                self.peak[key] = max(self.peak[key], now[key])
            self._stop.wait(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# Each part of the upload path alone, in a fresh process: peak RSS growth of one call (MB).
PART = r"""
import json, sys
from pathlib import Path
def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
from mldropd.pickle_scan import scan_pickle
from mldropd.settings import StorageSettings
from mldropd.store.s3 import S3Store
from mldropd.store.base import sha256_file
part, path, endpoint, key_file = sys.argv[1:5]
if part == "s3-put":
    store = S3Store(StorageSettings(kind="s3", bucket="models", prefix="isolated",
        endpoint_url=endpoint, access_key_file=key_file, secret_key_file=key_file))
    store.put_bytes("warmup", b"x")
    call = lambda: store.put_file("isolated/model.dill", Path(path))
elif part == "scan":
    call = lambda: scan_pickle(path)
else:
    call = lambda: sha256_file(Path(path))
before = kb("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
call()
print(json.dumps(round((kb("VmHWM") - before) / 1024, 1)))
"""


def isolated(part: str, path: Path, endpoint: str, key_file: Path) -> float:
    """Peak RSS growth (MB) of one part of the upload path, alone in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", PART, part, str(path), endpoint, str(key_file)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return float(done.stdout.strip().splitlines()[-1])


def upload(url: str, token: str, path: Path, name: str) -> dict[str, Any]:
    with open(path, "rb") as f:
        response = httpx.post(
            f"{url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (path.name, f, "application/octet-stream")},
            data={"name": name},
            timeout=900,
        )
    if response.status_code != 201:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text[:2000]}")
    return response.json()  # type: ignore[no-any-return]


def measure(home: Path, size_mb: int) -> dict[str, Any]:
    moto, endpoint = start_moto(home / "moto.log")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        s3 = s3_client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        (home / "s3-access-key").write_text(KEY)
        (home / "s3-secret-key").write_text(KEY)
        write_features(home / "features", [dt.date.today()], 1000, N_FEATURES)
        port = free_port()
        (home / "config.toml").write_text(
            CONFIG.format(port=port, bucket=BUCKET, endpoint=endpoint, limit=size_mb + 64)
        )
        config = ["--config", str(home / "config.toml")]
        made = subprocess.run(
            [sys.executable, "-m", "mldropd", "users", "add", "bench@example.com", *config],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        token = made.stdout.strip().splitlines()[-1]
        small = write_model(home / "small.dill", 1)
        big = write_model(home / "big.dill", size_mb)

        with open(home / "daemon.log", "wb") as log:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "mldropd", "serve", *config],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert daemon is not None
            if daemon.poll() is not None:
                raise RuntimeError(f"daemon exited; see {home / 'daemon.log'}")
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, 60, "the daemon")
        upload(url, token, small, "warmup")  # imports and thread pools of the upload path
        time.sleep(1.0)  # let the warm-up's temporary allocations go back
        before = status(daemon.pid)
        Path(f"/proc/{daemon.pid}/clear_refs").write_text("5")  # VmHWM := current VmRSS
        started = time.monotonic()
        with Sampler(daemon.pid) as sampler:
            model = upload(url, token, big, "big")
        seconds = time.monotonic() - started
        after = status(daemon.pid)

        # Correctness: the object in the bucket is the uploaded file.
        key = f"mldropd/bench@example.com/big/v{model['version']}/model.dill"
        head = s3.head_object(Bucket=BUCKET, Key=key)
        fetched = home / "fetched.dill"
        s3.download_file(BUCKET, key, str(fetched))
        expected = sha256_of(big)
        ok = (
            head["ContentLength"] == big.stat().st_size
            and sha256_of(fetched) == expected
            and model["versions"][0]["sha256"] == expected
        )
        fetched.unlink()
        parts = {
            f"alone_{part.replace('-', '_')}_growth_mb": isolated(
                part, big, endpoint, home / "s3-access-key"
            )
            for part in ("scan", "sha256", "s3-put")
        }
        mb = 1024.0
        return {
            "file_mb": round(big.stat().st_size / MB, 1),
            "upload_seconds": round(seconds, 1),
            "rss_before_mb": round(before["VmRSS"] / mb, 1),
            "rss_peak_mb": round(after["VmHWM"] / mb, 1),
            "rss_growth_mb": round((after["VmHWM"] - before["VmRSS"]) / mb, 1),
            "anon_growth_mb": round((sampler.peak["RssAnon"] - before["RssAnon"]) / mb, 1),
            "file_backed_growth_mb": round((sampler.peak["RssFile"] - before["RssFile"]) / mb, 1),
            "rss_after_mb": round(after["VmRSS"] / mb, 1),
            "object_matches": ok,
            **parts,
        }
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if moto.stdin:
            moto.stdin.close()
        try:
            moto.wait(timeout=30)
        except subprocess.TimeoutExpired:
            moto.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="Model file size (MB).")
    parser.add_argument("--json", type=Path, help="Also write the result to this JSON file.")
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it.")
    args = parser.parse_args()
    home = args.keep or Path(tempfile.mkdtemp(prefix="mldropd-upload-rss-"))
    home.mkdir(parents=True, exist_ok=True)
    try:
        result = measure(home.resolve(), args.size_mb)
    finally:
        if args.keep is None:
            shutil.rmtree(home, ignore_errors=True)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["object_matches"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
