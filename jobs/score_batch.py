"""The batch job: runs planned batches (one date, or a backfill's dates) out of the web process.

The daemon forks it from its fork server (mldropd.batch.runner); `mldropd run` runs it in its
own process; it can also be started by hand or by spark-submit:
python -m mldropd.jobs.score_batch SETTINGS.json|config.toml BATCH_ID [BATCH_ID ...]
[--no-retries]. A batch that is not pending (finished, or running elsewhere) is refused with
one sentence and exit code 2. `--serve` (the daemon's Spark batch driver, forked with a channel
as descriptor 3) runs such jobs one after another in one process; see serve().
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from mldropd import logs
from mldropd.batch import ledger
from mldropd.batch.plan import REFUSED_EXIT
from mldropd.batch.report import report_batches
from mldropd.batch.run import BatchJob
from mldropd.batch.runner import batch_lock
from mldropd.db import make_engine
from mldropd.engines import Engines
from mldropd.settings import Settings, load_settings
from mldropd.states import RunStatus

log = logging.getLogger(__name__)


def run_batches(
    settings: Settings,
    batch_ids: list[int],
    *,
    retries: bool = True,
    engine: Engine | None = None,
    sandboxes: Any = None,
    engines: Engines | None = None,
) -> dict[int, RunStatus]:
    """Run the batches in order in this process, sharing the fork server and any Spark session;
    one report per owner for all of them. A batch someone else runs is left alone.

    sandboxes: a fork server the caller started early (it imports while we prepare).
    engines: the caller's, kept after (the Spark batch driver's); else ours, closed after."""
    db = engine or make_engine(settings.database.path)
    own = engines is None
    engines = engines or Engines(settings, sandboxes)
    statuses: dict[int, RunStatus] = {}
    refused: list[str] = []
    try:
        for index, batch_id in enumerate(batch_ids):
            try:
                with batch_lock(settings, batch_id):
                    job = BatchJob(
                        settings,
                        batch_id,
                        engine=db,
                        retries=retries,
                        engines=engines,
                        report=False,
                        dates=(index, len(batch_ids)),
                    )
                    statuses[batch_id] = job.execute()
            except BlockingIOError:  # another process holds the batch's lock
                refused.append(ledger.busy(db, batch_id))
            except ledger.NotRunnable as exc:
                refused.append(str(exc))
        ended = [b for b, st in statuses.items() if st != RunStatus.PENDING]
        if ended:  # the owners hear first; the fork server ends after
            report_batches(db, settings, ended, retries=retries)
    finally:
        engines.close(keep_spark=not own)
    if refused:
        raise ledger.NotRunnable("; ".join(refused))
    return statuses


def _settings(path: str) -> Settings:
    if path.endswith(".toml"):  # spark-submit by hand: the daemon's own config file
        return load_settings(path)
    return Settings.from_dict(json.loads(Path(path).read_text()))


def _run(argv: list[str], settings: Settings, **kw: Any) -> int:
    ids = [int(a) for a in argv[1:] if not a.startswith("--")]
    try:
        run_batches(settings, ids, retries="--no-retries" not in argv, **kw)
    except ledger.NotRunnable as exc:
        print(f"mldropd: {exc}", file=sys.stderr)
        return REFUSED_EXIT
    return 0


def main(argv: list[str]) -> int:
    """Exit 0 when the batches ran (whatever became of their models), 2 when one cannot run."""
    with contextlib.suppress(OSError):
        os.nice(10)  # web requests stay fast while a batch runs; it gets every idle cycle
    if argv[:1] == ["--serve"]:
        return serve(socket.socket(fileno=3))
    settings = _settings(argv[0])
    logs.configure(settings.server.log_format, settings.server.log_level)
    return _run(argv, settings)


def serve(channel: socket.socket) -> int:
    """The Spark batch driver (mldropd.batch.driver): run the jobs the daemon sends on the
    channel ({"argv": [...]} a line, main's arguments), one after another in this process with
    one Engines, so their Spark batches share one session; answer {"exit": code} a line. Ends
    at the channel's end (the daemon closed it) or after a job that raised."""
    key, engines, db, pending = "", None, None, b""
    try:
        while True:
            while b"\n" not in pending:
                more = channel.recv(65536)
                if not more:
                    return 0
                pending += more
            line, _, pending = pending.partition(b"\n")
            argv = list(json.loads(line)["argv"])
            settings = _settings(argv[0])
            if (new_key := json.dumps(settings.to_dict(), sort_keys=True)) != key:  # new config
                if engines is not None:
                    engines.close()
                key = new_key
                logs.configure(settings.server.log_format, settings.server.log_level)
                engines, db = Engines(settings), make_engine(settings.database.path)
            code = _run(argv, settings, engines=engines, engine=db)
            channel.sendall(json.dumps({"exit": code}).encode() + b"\n")
    finally:
        if engines is not None:
            engines.close()  # stops the session: its JVM's temporary files go with it


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
