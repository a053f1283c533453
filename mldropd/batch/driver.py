"""The daemon's Spark batch driver: one long-lived batch job process that runs the daemon's Spark
batches one after another with one Spark session.

A Spark session takes 10-30 s to start (a JVM, then the executors' Python workers) and a JVM
cannot be forked, so the fork server, which spares each batch job the interpreter start and the
imports, cannot spare it the session. Without the driver every Spark batch the daemon runs pays
it again: the sweep's batch, then each retry of its failed models. The driver is a batch job like
any other (forked from the fork server into its own process group, `jobs/score_batch.py`), except
that it does not end after its batches: it waits on a socket for the runner's next job and keeps
its engines, so the next Spark batch finds the session running. The runner closes it after
[engine] spark_keep_s idle seconds (it stops its session and ends), at the daemon's stop, and
after a job that did not end cleanly (the next job gets a fresh process).

Restart safety is the forked job's: whoever runs a batch claims it in the ledger, holds its lock
file and commits each step as it happens, so a driver killed at any moment leaves exactly the
states a killed job leaves, and the runner settles them the same way (mldropd.batch.runner): the
batch is closed with "the batch job died" and its failed models are retried; a daemon that dies
takes the fork server and so the driver with it (and the driver's JVM ends with its stdin), and
recover() re-queues the batch at the next start.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import logging
import select as fd_select
import socket
import time
from typing import Any

from sqlalchemy.engine import Engine

from mldropd.batch import ledger
from mldropd.db import session_scope
from mldropd.records import BatchRun
from mldropd.settings import Settings

log = logging.getLogger(__name__)


def uses_spark(db: Engine, settings: Settings, batch_ids: list[int]) -> bool:
    """Whether the batch job will score any of these batches on Spark: the job's own choice
    (mldropd.engines.choose_engine) asked ahead, with its pending models' params.engine."""
    from mldropd.engines import choose_engine, pyspark_available, under_spark_submit
    from mldropd.features import FeatureSource

    if not pyspark_available():  # the job would fail its Spark batches on its own
        return False
    planned: list[tuple[dt.date, list[dict[str, Any]]]] = []
    with session_scope(db) as s:
        for batch_id in batch_ids:
            batch = s.get(BatchRun, batch_id)
            versions = [v for _, _, v in ledger.pending_runs(s, batch_id)]
            if batch is not None:
                planned.append((batch.date, [v.contract.get("params") or {} for v in versions]))
    source = FeatureSource(settings.features)
    for day, params in planned:
        try:
            name, _ = choose_engine(
                settings.features,
                settings.engine,
                {f"model {i}": p.get("engine") for i, p in enumerate(params)},
                count_rows=functools.partial(source.count, day),
                spark_installed=True,  # asked above
                under_spark_submit=under_spark_submit(),
            )
        except Exception:  # no slice yet (the job waits for it): not Spark for now
            continue
        if name == "spark":
            return True
    return False


class SparkDriver:
    """The runner's handle on its driver process: start, send a job, wait for its answer."""

    def __init__(self, server: Any, env: dict[str, str], cwd: str, log_fd: int) -> None:
        """Fork the driver from the fork server; its log goes to log_fd (the runner relays it)."""
        ours, theirs = socket.socketpair()
        try:
            self.job = server.batch(["--serve"], env, log_fd, cwd, channel_fd=theirs.fileno())
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.channel = ours
        self.idle_since = time.monotonic()
        self.run_id: int | None = None  # the batch it runs (the run id of its relayed lines)
        self._pending = b""
        self._answer: dict[str, Any] | None = None
        log.info("spark batch driver started (pid %d)", self.job.pid)

    def alive(self) -> bool:
        return self.job.wait(timeout=0) is None

    def send(self, argv: list[str], run_id: int) -> None:
        """Start a job (score_batch main's arguments); wait() tells when it has ended."""
        self._answer, self.run_id = None, run_id
        self.channel.sendall(json.dumps({"argv": argv}).encode() + b"\n")

    def wait(self, timeout: float) -> bool:
        """True once the job has ended: answered, or the driver died."""
        if self._answer is not None or self.job.status is not None:
            return True
        ready, _, _ = fd_select.select([self.channel, self.job.conn], [], [], timeout)
        if self.channel in ready:
            with contextlib.suppress(OSError):
                more = self.channel.recv(65536)
                if more:
                    self._pending += more
                    if b"\n" in self._pending:
                        line, _, self._pending = self._pending.partition(b"\n")
                        self._answer = json.loads(line)
                        self.idle_since = time.monotonic()
                        return True
                    return False
            self.job.wait(timeout=10)  # its end of the channel closed: it has ended
            return True
        if self.job.conn in ready:  # the fork server reports its end (or went away)
            self.job.wait(timeout=10)
            return True
        return False

    @property
    def answered(self) -> bool:
        """The job ended with an answer (not with the driver's death)."""
        return self._answer is not None

    def exit_code(self) -> int | None:
        """The job's exit code: the driver's answer, or its own if it ended (None: killed)."""
        if self._answer is not None:
            return int(self._answer.get("exit", 1))
        return self.job.exit_code

    def kill(self) -> None:
        self.job.kill()

    def close(self, timeout: float = 30.0) -> None:
        """End it: the channel's end lets it stop its session; killed if it takes longer."""
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_WR)
        if self.job.wait(timeout=timeout) is None:
            self.job.kill()
            self.job.wait(timeout=10)
        self.channel.close()
        self.job.close()
        log.info("spark batch driver stopped (pid %d)", self.job.pid)
