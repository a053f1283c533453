"""The web process stays light: importing the app loads no data library (the batch job and
the sandbox's fork server do that work, in their own processes)."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("sklearn", "pandas", "duckdb", "pyspark", "pyarrow", "numpy", "polars", "lightgbm")


def test_importing_the_app_loads_no_data_library() -> None:
    code = (
        "import json, sys; import mldropd.app, mldropd.cli; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
