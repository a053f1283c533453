"""Child processes for model code: time and memory limits, scrubbed environment, private cwd.

The limits are applied by the child itself (apply_limits) as its first act, before any model
is loaded: preexec_fn is unsafe in a threaded daemon.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Variables a child keeps; everything else (credentials, MLDROPD_*, session secrets) is dropped.
_KEEP = (
    "PATH",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "PYTHONPATH",
    "VIRTUAL_ENV",
    "JAVA_HOME",
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "SPARK_HOME",
    "SPARK_LOCAL_IP",
    "PYSPARK_PYTHON",
)
LIMIT_ENV = "MLDROPD_CHILD_MEMORY_MB"
CPU_ENV = "MLDROPD_CHILD_CPU_S"


def child_env(private_dir: Path, memory_mb: int, cpu_s: int | None = None) -> dict[str, str]:
    """A minimal environment: no secrets, HOME and TMPDIR in the child's private folder."""
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env.update(
        HOME=str(private_dir),
        TMPDIR=str(private_dir),
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        MPLCONFIGDIR=str(private_dir),
    )
    env[LIMIT_ENV] = str(memory_mb)
    if cpu_s:
        env[CPU_ENV] = str(cpu_s)
    return env


def apply_limits() -> None:
    """Called first thing in a child: cap address space and CPU time as the parent asked."""
    memory_mb = int(os.environ.get(LIMIT_ENV, "0") or 0)
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    cpu_s = int(os.environ.get(CPU_ENV, "0") or 0)
    if cpu_s > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@dataclass
class ChildResult:
    returncode: int | None
    timed_out: bool
    seconds: float
    stderr_tail: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self, timeout_s: float, memory_mb: int) -> str:
        """Plain words for how the child ended."""
        if self.timed_out:
            return f"stopped after the time limit of {timeout_s:.0f} s"
        code = self.returncode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = (
                " (memory limit or crash in native code)"
                if name in {"SIGSEGV", "SIGABRT", "SIGBUS"}
                else ""
            )
            if name == "SIGXCPU":
                hint = " (CPU time limit)"
            return f"the process was killed by {name}{hint}"
        if "MemoryError" in self.stderr_tail:
            return f"ran out of memory (limit {memory_mb} MB)"
        return f"the process exited with code {code}"


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start(
    argv: Sequence[str],
    *,
    memory_mb: int,
    private_dir: Path,
    cpu_s: int | None = None,
    stdout: int | None = subprocess.DEVNULL,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start a sandboxed child in its own process group."""
    private_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        list(argv),
        cwd=private_dir,
        env=child_env(private_dir, memory_mb, cpu_s),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        process_group=0,
    )


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(
    argv: Sequence[str], *, timeout_s: float, memory_mb: int, private_dir: Path | None = None
) -> ChildResult:
    """Run a sandboxed child to completion or until its wall-clock limit."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mldropd-child-") as tmp:
        proc = start(
            argv,
            memory_mb=memory_mb,
            private_dir=private_dir or Path(tmp),
            cpu_s=int(timeout_s) + 10,
        )
        timed_out = False
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(proc)
            _, err = proc.communicate()
    tail = (err or b"").decode("utf-8", "replace")[-4000:]
    return ChildResult(proc.returncode, timed_out, time.monotonic() - started, tail)
