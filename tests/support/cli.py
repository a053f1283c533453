"""The command line as scripts use it: `python -m mldropd ... --config HOME/config.toml`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def mldropd(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one mldropd command on the home in a real process; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "mldropd", *args, "--config", str(home / "config.toml")],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home,
    )
