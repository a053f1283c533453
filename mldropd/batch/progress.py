"""Progress of a running batch, recorded for the page, the API and `mldropd run`.

Every figure comes from the batch job's own counts: its phase (the steps of BatchJob.execute),
the rows the trusted writer wrote per model run (the engines' `progress` callback), the slice's
rows per model run (the key screen counts them), the dates of its job. Never a figure a model's
sandbox reports about itself.

The fields live on the model runs (records.ModelRun: phase, rows_done, rows_total, rows_per_s,
eta_s, progress_at, dates_done, dates_total), so the API and the pages read them with the run.
Writes cost nothing measurable: a phase change is written at once (a batch has a handful), row
counts at most every MIN_INTERVAL_S, each write one short transaction on a connection that waits
at most WAIT_S for the write lock, so a busy database skips an update instead of stalling the
scoring pass. Light on purpose (SQLAlchemy only), like the ledger.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import bindparam, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from mldropd.db import make_engine
from mldropd.records import BatchRun, ModelRun, utcnow
from mldropd.states import Phase, RunStatus

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5  # row counts are written at most twice a second
RATE_WINDOW_S = 10.0  # the rate is measured over the last ten seconds
WAIT_S = 0.2  # longest wait for SQLite's write lock before an update is skipped
_RUNS = ModelRun.__table__  # type: ignore[attr-defined]
_BATCHES = BatchRun.__table__  # type: ignore[attr-defined]


class RateMeter:
    """Rows per second over the last window_s seconds of samples, and the time left at it."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, rows: int) -> None:
        """A count of rows done at monotonic time `at`."""
        if self._samples and rows < self._samples[-1][1]:
            self._samples.clear()  # a count that went back starts a new measurement
        self._samples.append((at, rows))
        # Keep one sample older than the window: the rate spans the whole window.
        while len(self._samples) > 2 and at - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Rows per second, None before two samples some time apart."""
        if len(self._samples) < 2:
            return None
        (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
        return (r1 - r0) / (t1 - t0) if t1 > t0 else None

    def eta(self, left: int) -> float | None:
        """Seconds until `left` more rows are done at the current rate (None: not known)."""
        rate = self.rate()
        if left <= 0:
            return 0.0
        return left / rate if rate else None


class BatchProgress:
    """Records one batch's progress on its model runs that are pending or running.

    Called by the batch job (phase, totals, checking) and by the scoring engine, as its
    `progress` callback (phase, rows written per model run)."""

    def __init__(
        self,
        db: Engine,
        batch_id: int,
        *,
        dates: tuple[int, int] = (0, 1),
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self.db = db
        self.batch_id = batch_id
        self.dates_done, self.dates_total = dates
        self.clock = clock
        self.interval_s = interval_s
        self.writes = 0  # transactions committed (the throttle's test counts them)
        self._writer: Engine | None = None
        self._phase: Phase | None = None
        self._phase_started = clock()
        self._rows: dict[int, int] = {}  # model run id -> rows written
        self._totals: dict[int, int] = {}  # model run id -> rows of its slice
        self._meter = RateMeter()
        self._rate: float | None = None  # the scoring rate, kept through the later phases
        self._eta: float | None = None  # a phase-wide estimate (DQ), when not per model
        self._last_write = float("-inf")
        self._dirty = False
        self._warned = False

    # -- what the batch job and the engines tell it ---------------------------------------------
    def phase(self, phase: Phase | str) -> None:
        """The batch entered a phase: written at once."""
        self._enter(Phase(phase))
        self._write()

    def totals(self, rows: Mapping[int, int]) -> None:
        """The rows each model run will score (written with the next write)."""
        self._totals.update(rows)
        self._dirty = True

    def __call__(self, phase: str, rows: Mapping[int, int]) -> None:
        """The engines' progress callback (mldropd.engines.base.Progress): rows written so far
        per model run, counted by the trusted writer. Throttled."""
        changed = self._enter(Phase(phase))
        if rows:
            self._rows.update(rows)
            self._meter.add(self.clock(), max(self._rows.values()))
            rate = self._meter.rate()
            self._rate = rate if rate is not None else self._rate
            self._dirty = True
        if changed or self.clock() - self._last_write >= self.interval_s:
            self._write()

    def scored(self, rows: Mapping[int, int]) -> None:
        """The final row counts of the scoring pass (written with the next write)."""
        self._rows.update(rows)
        self._dirty = True

    def checking(self, done: int, total: int) -> None:
        """DQ: `done` of the batch's `total` scored models are checked; the time left is the
        mean time of those checked so far times the number left."""
        changed = self._enter(Phase.DQ)
        elapsed = self.clock() - self._phase_started
        self._eta = elapsed / done * (total - done) if done else None
        self._dirty = True
        if changed or self.clock() - self._last_write >= self.interval_s:
            self._write()

    def close(self) -> None:
        """Let go of the connection (the batch is over: its runs are no longer busy)."""
        if self._writer is not None:
            self._writer.dispose()
            self._writer = None

    # -- the write ------------------------------------------------------------------------------
    def _enter(self, phase: Phase) -> bool:
        if phase == self._phase:
            return False
        self._phase, self._phase_started, self._eta = phase, self.clock(), None
        self._dirty = True
        return True

    def etas(self) -> dict[int, float | None]:
        """Seconds left per model run while scoring, at the batch's current rate."""
        if self._phase != Phase.SCORING:
            return {}
        return {
            run_id: self._meter.eta(total - self._rows.get(run_id, 0))
            for run_id, total in self._totals.items()
        }

    def _write(self) -> None:
        self._last_write = self.clock()
        try:
            self._commit()
        except OperationalError as exc:  # the database is busy: the next write catches up
            log.debug("progress not recorded (%s)", exc, extra={"run_id": self.batch_id})
            return
        except Exception:  # progress is never worth a batch
            if not self._warned:
                log.warning("progress could not be recorded", exc_info=True)
                self._warned = True
            return
        self._dirty = False
        self.writes += 1

    def _commit(self) -> None:
        if self._writer is None:
            self._writer = make_engine(str(self.db.url.database), busy_timeout_s=WAIT_S)
        etas = self.etas()
        phase = self._phase.value if self._phase else None
        shared = {
            "p_batch": self.batch_id,
            "p_phase": phase,
            "p_rate": self._rate,
            "p_eta": self._eta,
            "p_at": utcnow(),
            "p_dates_done": self.dates_done,
            "p_dates_total": self.dates_total,
        }
        with self._writer.begin() as conn:
            conn.execute(_SET_BATCH, {"p_batch": self.batch_id, "p_phase": phase})
            conn.execute(_SET_RUNS, shared)
            ids = sorted(set(self._rows) | set(self._totals))
            if ids:
                rows = [
                    {
                        "p_run": i,
                        "p_done": self._rows.get(i, 0),
                        "p_total": self._totals.get(i),
                        "p_eta": etas.get(i, self._eta),
                    }
                    for i in ids
                ]
                conn.execute(_SET_ROWS, rows)


# The statements, built once (building one costs more than running it). Only runs still busy
# are touched: a run that ended keeps what it had.
def _busy(status: Any) -> Any:
    return or_(status == RunStatus.PENDING.value, status == RunStatus.RUNNING.value)


_SET_BATCH = (
    update(_BATCHES)
    .where(_BATCHES.c.id == bindparam("p_batch"), _busy(_BATCHES.c.status))
    .values(phase=bindparam("p_phase"))
)
_SET_RUNS = (
    update(_RUNS)
    .where(_RUNS.c.batch_id == bindparam("p_batch"), _busy(_RUNS.c.status))
    .values(
        phase=bindparam("p_phase"),
        rows_per_s=bindparam("p_rate"),
        eta_s=bindparam("p_eta"),
        progress_at=bindparam("p_at"),
        dates_done=bindparam("p_dates_done"),
        dates_total=bindparam("p_dates_total"),
    )
)
_SET_ROWS = (
    update(_RUNS)
    .where(_RUNS.c.id == bindparam("p_run"), _busy(_RUNS.c.status))
    .values(
        rows_done=bindparam("p_done"), rows_total=bindparam("p_total"), eta_s=bindparam("p_eta")
    )
)
