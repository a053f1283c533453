"""Daemon side of batch runs: a worker thread runs pending batches, one at a time, each in a
batch job subprocess (jobs/score_batch.py); crashed batches are found and re-queued at start."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from mldropd import logs
from mldropd.batch import write
from mldropd.batch.plan import REFUSED_EXIT, claim_for_runner, retry_at
from mldropd.batch.run import BatchJob
from mldropd.db import session_scope
from mldropd.notify.outbox import deliver_pending
from mldropd.records import BatchRun, ModelRun, utcnow
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, RunStatus

log = logging.getLogger(__name__)

RetryHook = Callable[[dt.date, list[int], dt.datetime], None]
WaitHook = Callable[[int, dt.datetime], None]


def _relay(stream: Any, batch_id: int) -> None:
    """The batch job's log lines join the daemon's log (as JSON events when it logs JSON)."""
    for line in iter(stream.readline, b""):
        logs.relay_line(line.decode("utf-8", "replace"), batch_id)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _is_batch_job(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"mldropd.jobs.score_batch" in cmdline


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


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


class Runner:
    """Runs batch runs in order; one batch at a time (2 cores: batches would only compete)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        on_retry: RetryHook | None = None,
        on_wait: WaitHook | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.on_retry = on_retry
        self.on_wait = on_wait
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: subprocess.Popen[bytes] | None = None
        self._stopping = False
        # One file per runner process: a CLI run and the daemon may use different overrides.
        self.settings_file = Path(settings.server.work_dir) / f"batch-settings-{os.getpid()}.json"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from a crash, then run every pending batch in the background."""
        self._write_settings()
        now = utcnow()
        for batch_id, not_before in self.recover():
            if not_before is not None and _aware(not_before) > now and self.on_wait is not None:
                self.on_wait(batch_id, _aware(not_before))  # still waiting for its data
            else:
                self._queue.put(batch_id)
        self._thread = threading.Thread(target=self._loop, name="batch-runner", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking batches; give the running one grace_s, then stop it (resumed at start)."""
        self._stopping = True
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=grace_s)
        proc = self._current
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.settings_file.unlink(missing_ok=True)

    def submit(self, batch_id: int) -> None:
        self._queue.put(batch_id)

    def _write_settings(self) -> None:
        self.settings_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.settings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.settings.to_dict()))
        os.chmod(tmp, 0o600)
        tmp.replace(self.settings_file)

    def recover(self) -> list[tuple[int, dt.datetime | None]]:
        """Re-queue batches whose runner died; return every pending batch (id, not_before).

        A batch job whose runner (an earlier daemon, killed) is gone is stopped and run again
        from the start: its partitions are only ever replaced whole, so nothing is doubled.
        A job still watched by a live runner (`mldropd run` in a shell) is left alone.
        """
        with session_scope(self.engine) as s:
            for batch in s.exec(select(BatchRun).where(BatchRun.status == RunStatus.RUNNING)):
                if _alive(batch.runner_pid) and batch.runner_pid != os.getpid():
                    continue
                if _is_batch_job(batch.pid):
                    assert batch.pid is not None
                    os.killpg(batch.pid, signal.SIGKILL)  # an orphan of the old daemon
                    _wait_gone(batch.pid)
                runs = s.exec(
                    select(ModelRun).where(
                        ModelRun.batch_id == batch.id,
                        col(ModelRun.status).in_([ModelRunStatus.RUNNING, ModelRunStatus.PENDING]),
                    )
                ).all()
                for run in runs:
                    run.status, run.started_at = ModelRunStatus.PENDING, None
                batch.status, batch.pid = RunStatus.PENDING, None
                log.warning(
                    "re-queued a batch interrupted by a stop",
                    extra={"run_id": batch.id, "date": batch.date.isoformat()},
                )
        # Only now that no orphan can still be writing: repair half-swapped partitions.
        write.recover(self.settings.scores.path)
        with session_scope(self.engine) as s:
            return [
                (batch_id, not_before)
                for batch_id, not_before in s.exec(
                    select(BatchRun.id, BatchRun.not_before)
                    .where(BatchRun.status == RunStatus.PENDING)
                    .order_by(BatchRun.date, BatchRun.id)
                )
            ]

    def _loop(self) -> None:
        while not self._stopping:
            batch_id = self._queue.get()
            if batch_id is None or self._stopping:
                break
            try:
                self.run(batch_id)
            except Exception:
                log.exception("batch could not be run", extra={"run_id": batch_id})

    # -- one batch ---------------------------------------------------------------------------
    def run(self, batch_id: int, *, retries: bool = True) -> RunStatus:
        """Run one batch in a job subprocess and wait; then deliver reports, schedule retries."""
        with session_scope(self.engine) as s:
            if not claim_for_runner(s, batch_id, os.getpid()):  # another process has it
                batch = s.get(BatchRun, batch_id)
                return RunStatus(batch.status) if batch else RunStatus.FAILED
        if not self.settings_file.exists():
            self._write_settings()
        argv = [
            sys.executable,
            "-m",
            "mldropd.jobs.score_batch",
            str(self.settings_file),
            str(batch_id),
        ]
        if not retries:
            argv.append("--no-retries")
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
        self._current = proc
        stalled = self._watch(proc, batch_id)
        self._current = None
        if self._stopping and proc.returncode != 0:
            return RunStatus.RUNNING  # recover() resumes it at the next start
        if proc.returncode == REFUSED_EXIT:  # another job took the batch first: not ours to fail
            with session_scope(self.engine) as s:
                return RunStatus(s.get(BatchRun, batch_id).status)  # type: ignore[union-attr]
        with session_scope(self.engine) as s:
            batch = s.get(BatchRun, batch_id)
            assert batch is not None
            status, not_before = RunStatus(batch.status), batch.not_before
        if status == RunStatus.PENDING and not_before is not None and proc.returncode == 0:
            if self.on_wait is not None:  # the sensor: the feature slice is late
                self.on_wait(batch_id, not_before)
            return status
        if status in (RunStatus.RUNNING, RunStatus.PENDING):
            write.recover(self.settings.scores.path, clean=False)  # a swap it left half-done
            why = (
                f"the batch job sent no heartbeat for "
                f"{self.settings.scheduler.heartbeat_timeout_s} s and was stopped"
                if stalled
                else f"the batch job died (exit code {proc.returncode})"
            )
            job = BatchJob(self.settings, batch_id, engine=self.engine)
            job.close(f"{why}; see the daemon log")
            with session_scope(self.engine) as s:
                reported = s.get(BatchRun, batch_id).reported  # type: ignore[union-attr]
            if not reported:  # the owners still hear what became of their models
                job.report()
        self._after(batch_id, retries)
        with session_scope(self.engine) as s:
            return RunStatus(s.get(BatchRun, batch_id).status)  # type: ignore[union-attr]

    def _watch(self, proc: subprocess.Popen[bytes], batch_id: int) -> bool:
        """Relay the job's log and wait for it; stop it if its heartbeat stops. True if stalled."""
        assert proc.stdout is not None
        pump = threading.Thread(target=_relay, args=(proc.stdout, batch_id), daemon=True)
        pump.start()
        limit = dt.timedelta(seconds=self.settings.scheduler.heartbeat_timeout_s)
        stalled = False
        while True:
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                pass
            with session_scope(self.engine) as s:
                beat = s.get(BatchRun, batch_id).heartbeat_at  # type: ignore[union-attr]
            if beat is not None and utcnow() - _aware(beat) > limit:
                log.error("batch job stalled; stopping it", extra={"run_id": batch_id})
                stalled = True
                os.killpg(proc.pid, signal.SIGKILL)
        pump.join(timeout=5)
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
