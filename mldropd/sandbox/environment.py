"""The environment a fork server starts with: nothing secret, thread counts fixed before any
numeric library loads (OpenBLAS and OpenMP read them once, at load)."""

from __future__ import annotations

import os

# Variables a fork server keeps; everything else (credentials, MLDROPD_*, tokens) is dropped.
_KEEP = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH", "JAVA_HOME", "SPARK_HOME")


def clean_environment(threads: int = 0) -> dict[str, str]:
    """A minimal environment for a process that will fork model hosts."""
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    n = str(threads or os.cpu_count() or 1)
    env.update(
        HOME="/nonexistent",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS=n,
        OPENBLAS_NUM_THREADS=n,
        MKL_NUM_THREADS=n,
    )
    return env
