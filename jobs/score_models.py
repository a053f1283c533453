"""Sandboxed child: score a feature slice with several models in one pass (model code runs here).

Started by the batch job (mldropd.batch.score); reports progress as JSON lines on the file
descriptor that was stdout, while anything the models print goes to stderr.
Usage: python -m mldropd.jobs.score_models REQUEST.json
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import sys
from pathlib import Path

from mldropd import sandbox


def main(argv: list[str]) -> int:
    sandbox.apply_limits()
    # Scoring yields the CPU to the daemon: web requests stay fast while a batch runs, and the
    # batch still gets every cycle the daemon leaves idle.
    os.nice(10)
    # Keep the protocol stream private: models that print must not corrupt it.
    protocol = os.fdopen(os.dup(1), "w")  # the Reporter flushes each event (or pair of events)
    os.dup2(2, 1)
    from mldropd.engines.local import ModelTask, Reporter, score_slice
    from mldropd.settings import FeatureSettings

    request = json.loads(Path(argv[0]).read_text())
    report = Reporter(protocol)
    tasks = [ModelTask.from_dict(m) for m in request["models"]]
    rows = score_slice(
        FeatureSettings(**request["features"]),
        dt.date.fromisoformat(request["slice_date"]),
        tasks,
        int(request["batch_rows"]),
        dt.datetime.fromisoformat(request["scored_at"]),
        report,
        request.get("key_filters"),
    )
    # Peak RSS of this process, for the operator's log and the memory benchmark.
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report("end", rows=rows, peak_rss_mb=round(peak_mb, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
