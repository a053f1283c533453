"""Runs batch jobs: a worker thread takes pending batches one at a time; crashed batches are
found and re-queued at start.

Two modes, like rq's Worker and SimpleWorker: the daemon forks each job from its sandbox fork
server (a pre-imported process: no interpreter start or import per batch), in its own process
group, relaying its log and watching its heartbeat; `mldropd run` and tests run the job in this
process (inline). Either way the job holds the batch's lock file while it runs, which is how a
restarted daemon tells a batch still being run from one whose job died. The daemon's Spark
batches go to its Spark batch driver instead (mldropd.batch.driver: a forked job that stays for
the next one, so they share one Spark session), watched and settled the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from mldropd import logs
from mldropd.batch import ledger, write
from mldropd.batch.driver import SparkDriver, uses_spark
from mldropd.batch.plan import REFUSED_EXIT, retry_at
from mldropd.batch.report import report_batches
from mldropd.db import session_scope
from mldropd.notify.outbox import deliver_pending
from mldropd.records import BatchRun, ModelRun, utcnow
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, RunStatus

log = logging.getLogger(__name__)

RetryHook = Callable[[dt.date, list[int], dt.datetime], None]
WaitHook = Callable[[int, dt.datetime], None]


# -- the batch lock ----------------------------------------------------------------------------
def lock_path(settings: Settings, batch_id: int) -> Path:
    return Path(settings.server.work_dir) / "locks" / f"batch-{batch_id}.lock"


@contextlib.contextmanager
def batch_lock(settings: Settings, batch_id: int) -> Iterator[None]:
    """Held by whoever runs the batch (raises BlockingIOError if someone else does)."""
    path = lock_path(settings, batch_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def lock_holder(settings: Settings, batch_id: int) -> int | None:
    """The pid of the process running the batch, or None when nobody runs it."""
    path = lock_path(settings, batch_id)
    try:
        f = open(path)  # noqa: SIM115
    except FileNotFoundError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = f.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(f, fcntl.LOCK_UN)
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Runner:
    """Runs batch runs in order; one job at a time (2 cores: jobs would only compete)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        sandboxes: Any = None,
        on_retry: RetryHook | None = None,
        on_wait: WaitHook | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.sandboxes = sandboxes  # set: fork jobs from its fork server; None: run inline
        self.inline_sandboxes: Any = None  # inline: a fork server the caller started early
        self.on_retry = on_retry
        self.on_wait = on_wait
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: Any = None
        self._driver: SparkDriver | None = None  # the Spark batch driver, while it is kept
        self._stopping = False
        # One file per runner process: a CLI run and the daemon may use different overrides.
        self.settings_file = Path(settings.server.work_dir) / f"batch-settings-{os.getpid()}.json"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from a crash, then run every pending batch in the background."""
        now = utcnow()
        for batch_id, not_before in self.recover():
            if not_before is not None and not_before > now and self.on_wait is not None:
                self.on_wait(batch_id, not_before)  # still waiting for its data
            else:
                self._queue.put(batch_id)
        self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking batches; give the running job grace_s, then stop it (resumed at start)."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        if self._current is not None:
            self._current.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_driver()
        self.settings_file.unlink(missing_ok=True)

    def submit(self, batch_id: int) -> None:
        self._queue.put(batch_id)

    def recover(self) -> list[tuple[int, dt.datetime | None]]:
        """Re-queue batches whose job died; return every pending batch (id, not_before).

        A running batch nobody holds the lock of was interrupted: it goes back to pending and
        runs again from the start (its partitions are only ever replaced whole, so nothing is
        doubled). A job still watched by a live runner (`mldropd run` in a shell) is left
        alone; a job whose runner is gone (an orphan of an earlier daemon) is stopped first.
        """
        with session_scope(self.engine) as s:
            running = [
                (b.id, b.runner_pid)
                for b in s.exec(select(BatchRun).where(BatchRun.status == RunStatus.RUNNING))
            ]
        for batch_id, runner_pid in running:
            assert batch_id is not None
            holder = lock_holder(self.settings, batch_id)
            if holder is not None and _alive(runner_pid) and runner_pid != os.getpid():
                continue
            if holder is not None and holder > 0:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(holder, signal.SIGKILL)  # an orphan job: its own process group
                _wait_unlocked(self.settings, batch_id)
            ledger.requeue(self.engine, batch_id)
            log.warning("re-queued a batch interrupted by a stop", extra={"run_id": batch_id})
        # Only now that no orphan can still be writing: repair half-swapped partitions.
        write.recover(self.settings.scores.path)
        with session_scope(self.engine) as s:
            return [
                (batch_id, nb)
                for batch_id, nb in s.exec(
                    select(BatchRun.id, BatchRun.not_before)
                    .where(BatchRun.status == RunStatus.PENDING)
                    .order_by(col(BatchRun.date), col(BatchRun.id))
                )
                if batch_id is not None
            ]

    def _loop(self) -> None:
        while not self._stopping:
            try:
                batch_id = self._queue.get(timeout=self._driver_idle_left())
            except queue.Empty:
                self._close_driver()  # idle for [engine] spark_keep_s
                continue
            if batch_id is None or self._stopping:
                break
            try:
                self.run(batch_id)
            except Exception:
                log.exception("batch could not be run", extra={"run_id": batch_id})

    # -- one job -------------------------------------------------------------------------------
    def run(self, batch_id: int, *, retries: bool = True) -> RunStatus:
        """Run one batch and wait; then deliver reports and schedule retries."""
        return self.run_job([batch_id], retries=retries)[batch_id]

    def run_job(self, batch_ids: list[int], *, retries: bool = True) -> dict[int, RunStatus]:
        """Run batches as one job (a backfill's dates: one model load, one report)."""
        todo = self._take(batch_ids)
        if todo:
            if self.sandboxes is None:
                self._run_inline(todo, retries)
            else:
                self._run_forked(todo, retries)
        statuses = {b: ledger.status(self.engine, b)[0] for b in batch_ids}
        for batch_id in todo:
            self._after(batch_id, retries)
        return statuses

    def _take(self, batch_ids: list[int]) -> list[int]:
        """The pending batches no other live process runs; this process becomes their runner."""
        return [b for b in batch_ids if ledger.claim_runner(self.engine, b, os.getpid())]

    def _run_inline(self, batch_ids: list[int], retries: bool) -> None:
        from mldropd.jobs.score_batch import run_batches

        run_batches(
            self.settings,
            batch_ids,
            retries=retries,
            engine=self.engine,
            sandboxes=self.inline_sandboxes,
        )

    def _run_forked(self, batch_ids: list[int], retries: bool) -> None:
        self._write_settings()
        argv = [str(self.settings_file), *map(str, batch_ids)] + (
            [] if retries else ["--no-retries"]
        )
        if self.settings.engine.spark_keep_s > 0 and uses_spark(
            self.engine, self.settings, batch_ids
        ):
            code, how, stalled = self._run_on_driver(argv, batch_ids)
        else:
            code, how, stalled = self._fork_job(argv, batch_ids)
        if self._stopping and code != 0:
            return  # recover() resumes it at the next start
        if code == REFUSED_EXIT:
            return  # another process took the batch: not ours to close
        for batch_id in batch_ids:
            state, not_before, reported = ledger.status(self.engine, batch_id)
            if state == RunStatus.PENDING and not_before is not None and code == 0:
                if self.on_wait is not None:  # the sensor: the feature slice is late
                    self.on_wait(batch_id, not_before)
                continue
            if state in (RunStatus.RUNNING, RunStatus.PENDING):
                write.recover(self.settings.scores.path, clean=False)  # a swap it left half-done
                why = (
                    f"the batch job sent no heartbeat for "
                    f"{self.settings.scheduler.heartbeat_timeout_s} s and was stopped"
                    if stalled
                    else f"the batch job died ({how})"
                )
                ledger.close(self.engine, batch_id, f"{why}; see the daemon log")
                if not reported:  # the owners still hear what became of their models
                    report_batches(self.engine, self.settings, [batch_id], retries=retries)

    def _write_settings(self) -> None:
        self.settings_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.settings.to_dict()))
        os.chmod(tmp, 0o600)
        tmp.replace(self.settings_file)

    def _fork_job(self, argv: list[str], batch_ids: list[int]) -> tuple[int | None, str, bool]:
        """One batch job forked for these batches: (exit code or None, how it ended, stalled)."""
        read_fd, write_fd = os.pipe()
        try:
            job = self.sandboxes.server.batch(argv, self._job_env(), write_fd, os.getcwd())
        finally:
            os.close(write_fd)
        pump = threading.Thread(target=_relay, args=(read_fd, lambda: batch_ids[0]), daemon=True)
        pump.start()
        self._current = job
        stalled = self._watch(lambda t: job.wait(timeout=t) is not None, job.kill, batch_ids)
        self._current = None
        pump.join(timeout=5)
        job.close()
        return job.exit_code, _describe(job.status), stalled

    def _run_on_driver(self, argv: list[str], batch_ids: list[int]) -> tuple[int | None, str, bool]:
        """The batches as one job of the Spark batch driver (started if none is kept)."""
        driver = self._driver
        if driver is not None and not driver.alive():
            self._close_driver()
            driver = None
        try:
            driver = driver or self._start_driver()
            driver.send(argv, batch_ids[0])
        except OSError:  # it ended between the check and the request: once more, on a new one
            self._close_driver()
            driver = self._start_driver()
            driver.send(argv, batch_ids[0])
        self._current = driver
        stalled = self._watch(driver.wait, driver.kill, batch_ids)
        self._current = None
        code, answered = driver.exit_code(), driver.answered
        if code not in (0, REFUSED_EXIT):  # it died, or a job raised: the next gets a new one
            self._close_driver()
        how = f"it exited with code {code}" if answered else _describe(driver.job.status)
        return code, how, stalled

    def _start_driver(self) -> SparkDriver:
        read_fd, write_fd = os.pipe()
        try:
            driver = SparkDriver(self.sandboxes.server, self._job_env(), os.getcwd(), write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        threading.Thread(
            target=_relay, args=(read_fd, lambda: driver.run_id), daemon=True
        ).start()  # the driver's log, for its whole life
        self._driver = driver
        return driver

    def _job_env(self) -> dict[str, str]:
        from mldropd.engines import FORKSERVER_ENV

        return {**os.environ, FORKSERVER_ENV: self.sandboxes.server.socket_path}

    def _driver_idle_left(self) -> float | None:
        """Seconds until the kept driver has idled [engine] spark_keep_s (None: no driver)."""
        if self._driver is None:
            return None
        idle = time.monotonic() - self._driver.idle_since
        return max(0.5, self.settings.engine.spark_keep_s - idle)

    def _close_driver(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            driver.close()

    def _watch(
        self, ended: Callable[[float], bool], kill: Callable[[], None], batch_ids: list[int]
    ) -> bool:
        """Wait for the job; stop it if its heartbeat stops. True if it was stalled."""
        limit = dt.timedelta(seconds=self.settings.scheduler.heartbeat_timeout_s)
        stalled = False
        while not ended(5):
            with session_scope(self.engine) as s:
                beats = [
                    b.heartbeat_at
                    for b in s.exec(select(BatchRun).where(BatchRun.status == RunStatus.RUNNING))
                    if b.id in batch_ids and b.heartbeat_at is not None
                ]
            if beats and utcnow() - max(beats) > limit:
                log.error("batch job stalled; stopping it", extra={"run_id": batch_ids[0]})
                stalled = True
                kill()
        return stalled

    def _after(self, batch_id: int, retries: bool) -> None:
        deliver_pending(self.engine, self.settings.email)
        if not retries or self.on_retry is None:
            return
        now = utcnow()
        by_time: dict[tuple[dt.date, dt.datetime], list[int]] = {}
        with session_scope(self.engine) as s:
            failed = s.exec(
                select(ModelRun).where(
                    ModelRun.batch_id == batch_id, ModelRun.status == ModelRunStatus.FAILED
                )
            )
            for run in failed:
                when = retry_at(
                    run.attempt,
                    self.settings.scheduler.max_attempts,
                    self.settings.scheduler.retry_delay,
                    now,
                )
                if when is not None:
                    by_time.setdefault((run.date, when), []).append(run.model_id)
        for (day, when), model_ids in by_time.items():
            self.on_retry(day, model_ids, when)


def _relay(fd: int, batch_id: Callable[[], int | None]) -> None:
    """The batch job's log lines join the daemon's log (as JSON events when it logs JSON);
    batch_id: the run id of lines that have none (the batch the job runs at the time)."""
    with open(fd, "rb") as stream:
        for line in iter(stream.readline, b""):
            logs.relay_line(line.decode("utf-8", "replace"), batch_id())


def _wait_unlocked(settings: Settings, batch_id: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while lock_holder(settings, batch_id) is not None and time.monotonic() < deadline:
        time.sleep(0.05)


def _describe(status: int | None) -> str:
    from mldropd.sandbox.forkserver import describe_status

    return describe_status(status).replace("the process", "it")
