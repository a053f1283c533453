"""The batch scoring job: runs one planned batch out of the daemon process.

The daemon starts it as a subprocess (mldropd.batch.runner); it can also be started by hand or
by spark-submit: python -m mldropd.jobs.score_batch SETTINGS.json|config.toml BATCH_ID
[--no-retries]. A batch that is not pending (finished, or running elsewhere) is refused with
one sentence and exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mldropd import logs
from mldropd.batch.plan import REFUSED_EXIT, claim_for_job
from mldropd.batch.run import BatchJob
from mldropd.db import make_engine, session_scope
from mldropd.settings import Settings, load_settings


def main(argv: list[str]) -> int:
    if argv[0].endswith(".toml"):  # spark-submit by hand: the daemon's own config file
        settings = load_settings(argv[0])
    else:
        settings = Settings.from_dict(json.loads(Path(argv[0]).read_text()))
    logs.configure(settings.server.log_format, settings.server.log_level)
    engine = make_engine(settings.database.path)
    with session_scope(engine) as s:
        refused = claim_for_job(s, int(argv[1]), os.getpid())
    if refused:
        print(f"mldropd: {refused}", file=sys.stderr)
        return REFUSED_EXIT
    BatchJob(settings, int(argv[1]), engine=engine, retries="--no-retries" not in argv).execute()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
