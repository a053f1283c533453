"""The static scan in a process of its own, so that a slow or huge file cannot delay requests.

Measured side by side (bench/scan_cost.py, 2 cores, 4 uploads of an 8 MB adversarial file):
deploy-page p99 124 ms idle, 367 ms with the four scans in child processes, 2,524 ms with the
same scans in threads of the daemon process (they hold the GIL between requests). The child
also caps the scan's memory (address space: [limits] scan_memory_mb plus the mapped file),
runs at a lower CPU priority, and is killed when it outlives its time budget. It runs no
model code: it reads the file's bytes with the standard library only.

    python -m mldropd.scan_process FILE BUDGET_S MEMORY_MB   (prints the ScanResult as JSON)
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from mldropd.pickle_scan import ScanResult, scan_pickle

MB = 1024 * 1024
_GRACE_S = 15  # interpreter start and result write, on a loaded machine
_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV")


def scan_in_child(path: Path, budget_s: float, memory_mb: int) -> ScanResult:
    """Scan path in a child process; every failure of the child becomes the result's error."""
    argv = [sys.executable, "-m", "mldropd.scan_process", str(path), str(budget_s), str(memory_mb)]
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=budget_s + _GRACE_S,
            env=env,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        return _failed(f"the scan did not finish within {budget_s + _GRACE_S:g} s")
    if done.returncode != 0 or not done.stdout:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        if "MemoryError" in tail[0] or done.returncode == -9:
            return _failed(f"the scan ran out of memory ([limits] scan_memory_mb = {memory_mb})")
        return _failed(f"the scan process failed (exit {done.returncode}: {tail[0][:300]})")
    data = json.loads(done.stdout)
    return ScanResult(**data)


def _failed(error: str) -> ScanResult:
    return ScanResult([], [], False, error, None)


def main(argv: list[str]) -> None:
    path, budget_s, memory_mb = Path(argv[0]), float(argv[1]), int(argv[2])
    limit = (memory_mb * MB) + path.stat().st_size  # the file is mapped, not read
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(10)  # the pages and the API come first
    result = scan_pickle(path, budget_s)
    sys.stdout.write(json.dumps(dataclasses.asdict(result)))


if __name__ == "__main__":
    main(sys.argv[1:])
