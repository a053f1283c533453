"""Crash-test hook for the reliability tests: kill the current process once at a named point."""

from __future__ import annotations

import os
import signal
from pathlib import Path


def fault_point(name: str) -> None:
    """MLDROPD_FAULT=<point>:<marker file> SIGKILLs this process once, at that point.

    Unset (always, outside the tests), it does nothing.
    """
    point, _, marker = os.environ.get("MLDROPD_FAULT", "").partition(":")
    if point == name and marker and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
