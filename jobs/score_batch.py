"""The batch scoring job: runs one planned batch out of the daemon process.

The daemon starts it as a subprocess (mldropd.batch.runner); it can also be started by hand or
by spark-submit: python -m mldropd.jobs.score_batch SETTINGS.json BATCH_ID [--no-retries]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mldropd import logs
from mldropd.batch.run import BatchJob
from mldropd.settings import Settings


def main(argv: list[str]) -> int:
    settings = Settings.from_dict(json.loads(Path(argv[0]).read_text()))
    logs.configure(settings.server.log_format, settings.server.log_level)
    BatchJob(settings, int(argv[1]), retries="--no-retries" not in argv).execute()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
