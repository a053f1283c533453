"""What `mldropd run` shows while it works and when it is done.

On a terminal: a live display (rich) of the dates done of the dates asked, and of each date in
progress its phase, rows of total, rate and time left; at the end a table of models x dates.
Elsewhere: a plain line per date done, then one line per model and date (scripts parse them);
with --quiet only those; with --json one JSON document. The figures are the ones the model page
shows, read from the model runs (recorded by the batch job from its own counts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
from sqlalchemy.exc import OperationalError

from mldropd.services import RunService
from mldropd.states import ModelRunStatus, Phase
from mldropd.text import duration, per_second

REFRESH_PER_S = 4  # the live display reads the database four times a second
PLAIN_POLL_S = 1.0
_FINISHED = {ModelRunStatus.SUCCEEDED, ModelRunStatus.FAILED, ModelRunStatus.SKIPPED}


@dataclass(frozen=True)
class DatePlan:
    """One asked date: the model run covering each model (empty: no model was due)."""

    day: dt.date
    runs: dict[int, int] = field(default_factory=dict)  # model id -> model run id
    names: dict[int, str] = field(default_factory=dict)  # model id -> name
    batch_id: int | None = None  # the batch planned here (None: nothing, or only joined runs)


@dataclass
class DateState:
    """Where one date is, from its model runs."""

    day: dt.date
    models: int
    finished: int = 0
    failed: int = 0
    phase: str | None = None
    rows_done: int | None = None
    rows_total: int | None = None
    rows_per_s: float | None = None
    eta_s: float | None = None
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return self.finished == self.models

    @property
    def busy(self) -> bool:
        return not self.done and self.phase is not None


def read_states(runs_of: RunService, plan: list[DatePlan]) -> list[DateState]:
    """Each asked date's state, in two queries."""
    runs = runs_of.runs_by_id(run_id for p in plan for run_id in p.runs.values())
    batch_ids = {r.batch_id for r in runs.values() if r.status == ModelRunStatus.RUNNING}
    phases = runs_of.batch_phases(batch_ids)
    states = []
    for p in plan:
        state = DateState(p.day, len(p.runs))
        mine = [runs[i] for i in p.runs.values() if i in runs]
        for run in mine:
            if run.status in _FINISHED:
                state.finished += 1
                state.failed += run.status != ModelRunStatus.SUCCEEDED
                state.seconds = max(state.seconds, run.seconds or 0.0)
        busy = [r for r in mine if r.status not in _FINISHED and r.phase]
        running = [r for r in busy if r.status == ModelRunStatus.RUNNING]
        if running:  # the batch's phase (it outlives its runs' DQ: the report), its figures
            lead = max(running, key=lambda r: r.rows_done or 0)
            state.phase = phases.get(lead.batch_id) or lead.phase
            state.rows_done, state.rows_total = lead.rows_done, lead.rows_total
            state.rows_per_s, state.eta_s = lead.rows_per_s, lead.eta_s
        elif any(r.phase == Phase.WAITING_FOR_DATA for r in busy):
            state.phase = Phase.WAITING_FOR_DATA
        states.append(state)
    return states


# -- the live display ------------------------------------------------------------------------------
class LiveView:
    """The rich renderable of the live display, read afresh at each refresh."""

    def __init__(self, runs: RunService, plan: list[DatePlan]) -> None:
        from rich.spinner import Spinner

        self.runs, self.plan = runs, plan
        self.started = time.monotonic()
        self.spinner = Spinner("dots", style="cyan")
        self._last: Any = None
        self._began: dict[dt.date, float] = {}  # when each date was first seen busy
        self._took: list[float] = []  # how long the dates done took

    def _time_left(self, states: list[DateState], now: float) -> float | None:
        """The dates left times the mean time of the dates done, less the current one's time."""
        for s in states:
            if s.busy and s.day not in self._began:
                self._began[s.day] = now
            if s.done and s.day in self._began:
                self._took.append(now - self._began.pop(s.day))
        if not self._took:
            return None
        left = sum(not s.done for s in states if s.models) * statistics.mean(self._took)
        return max(0.0, left - sum(now - t for t in self._began.values()))

    def render(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        try:
            states = read_states(self.runs, self.plan)
        except OperationalError:  # a busy or locked moment: show the last picture
            return self._last or Text("")
        now = time.monotonic()
        done = sum(s.done for s in states)
        left = self._time_left(states, now)
        grid = Table.grid(padding=(0, 1))
        summary = f"{done} of {len(states)} dates done · {duration(now - self.started)}"
        summary += f" · about {duration(left)} left" if left and done < len(states) else ""
        grid.add_row(
            self.spinner, ProgressBar(total=len(states), completed=done, width=30), Text(summary)
        )
        shown = [s for s in states if s.busy]
        if not shown:  # nothing started yet: the next date is queued
            shown = [s for s in states if not s.done][:1]
        for s in shown:
            words = [Phase(s.phase).text if s.phase else "queued"]
            bar: Any = Text("")
            if s.rows_total is not None and s.phase in (Phase.SCORING, Phase.WRITING, Phase.DQ):
                bar = ProgressBar(total=max(s.rows_total, 1), completed=s.rows_done or 0, width=30)
                words.append(f"{s.rows_done or 0:,} of {s.rows_total:,} rows")
            if s.rows_per_s and s.phase == Phase.SCORING:
                words.append(per_second(s.rows_per_s))
            if s.eta_s is not None:
                words.append(f"{duration(s.eta_s)} left")
            grid.add_row(Text(f"  {s.day}"), bar, Text(" · ".join(words)))
        self._last = grid
        return grid


@contextlib.contextmanager
def live_display(runs: RunService, plan: list[DatePlan]) -> Iterator[Callable[[str], None]]:
    """A live display on stdout while the block runs; yields how to print a message above it.
    The log shows warnings and errors only meanwhile (above the display, not through it)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    view = LiveView(runs, plan)
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
    with Live(
        console=console,
        get_renderable=view.render,
        refresh_per_second=REFRESH_PER_S,
        transient=True,
    ):
        kept = [(h, h.setStream(sys.stderr), h.level) for h in handlers]  # rich's proxy
        for h in handlers:
            h.setLevel(max(h.level, logging.WARNING))
        try:
            yield lambda text: console.print(text, markup=False, highlight=False)
        finally:
            for h, stream, level in kept:
                h.setStream(stream)
                h.setLevel(level)


@contextlib.contextmanager
def plain_lines(runs: RunService, plan: list[DatePlan]) -> Iterator[Callable[[str], None]]:
    """A line per date as it is done (a thread reads the runs every second)."""
    stop = threading.Event()
    lock = threading.Lock()

    def say(text: str) -> None:
        with lock:
            click.echo(text)

    def watch() -> None:
        told: set[dt.date] = set()
        while True:
            final = stop.wait(PLAIN_POLL_S)
            with contextlib.suppress(OperationalError):  # a busy moment: the next poll tells
                states = read_states(runs, plan)
                done = sum(s.done for s in states)
                for s in states:
                    if s.done and s.day not in told and s.models:
                        told.add(s.day)
                        say(
                            f"[{len(told)}/{sum(1 for x in states if x.models)}] {s.day}: "
                            f"{s.models - s.failed} succeeded, {s.failed} failed, "
                            f"{done} of {len(states)} dates done"
                        )
            if final:
                return

    thread = threading.Thread(target=watch, name="mldropd-run-lines", daemon=True)
    thread.start()
    try:
        yield say
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def messages_only(err: bool) -> Iterator[Callable[[str], None]]:
    """No progress: messages go to stdout (or stderr, when stdout is for JSON)."""
    yield lambda text: click.echo(text, err=err)


# -- the results ---------------------------------------------------------------------------------
def results(runs_of: RunService, plan: list[DatePlan]) -> list[dict[str, Any]]:
    """One entry per model and date, as `--json` prints it, by date then model name."""
    ids = [run_id for p in plan for run_id in p.runs.values()]
    runs, checks = runs_of.runs_by_id(ids), runs_of.dq_by_run(ids)
    out = []
    for p in plan:
        for model_id, name in sorted(p.names.items(), key=lambda item: item[1]):
            run = runs[p.runs[model_id]]
            dq = checks.get(run.id or 0)
            out.append(
                {
                    "model_id": model_id,
                    "model": name,
                    "date": p.day.isoformat(),
                    "run_id": run.id,
                    "batch_id": run.batch_id,
                    "joined": run.batch_id != p.batch_id,
                    "status": run.status,
                    "attempt": run.attempt,
                    "rows": run.rows,
                    "seconds": None if run.seconds is None else round(run.seconds, 3),
                    "error": run.error,
                    "warning": run.warning,
                    "dq": None
                    if dq is None
                    else {"status": dq.status, "reason": dq.reason, "psi": dq.psi, "auc": dq.auc},
                }
            )
    return out


def print_json(plan: list[DatePlan], rows: list[dict[str, Any]]) -> None:
    failed = sum(r["status"] != ModelRunStatus.SUCCEEDED for r in rows)
    document = {
        "dates": [p.day.isoformat() for p in plan],
        "not_due": [p.day.isoformat() for p in plan if not p.runs],
        "runs": rows,
        "failed": failed,
    }
    click.echo(json.dumps(document, indent=2))


def print_table(plan: list[DatePlan], rows: list[dict[str, Any]]) -> None:
    """The models x dates table: status, rows, time and DQ of each."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=None, show_edge=False, header_style="bold")
    for name in ("Model", "Date", "Status", "Rows", "Time", "DQ"):
        table.add_column(name, justify="right" if name in ("Rows", "Time") else "left")
    colour = {"succeeded": "green", "failed": "red"}
    for r in rows:
        status = str(r["status"]) + (" (joined)" if r["joined"] else "")
        dq = r["dq"]["status"] if r["dq"] else "—"
        table.add_row(
            f"{r['model']} (id {r['model_id']})",
            r["date"],
            f"[{colour.get(r['status'], 'yellow')}]{status}[/]",
            "—" if r["rows"] is None else f"{r['rows']:,}",
            duration(r["seconds"]),
            f"[{ {'ok': 'green', 'warn': 'yellow', 'alert': 'red'}.get(dq, 'default') }]{dq}[/]",
        )
    console = Console()
    console.print(table)
    for r in rows:
        if r["error"]:
            console.print(f"{r['model']} {r['date']}: {r['error']}", markup=False, style="red")
    for p in plan:
        if not p.runs:
            console.print(f"no model is due on {p.day}", markup=False)


def print_lines(plan: list[DatePlan], rows: list[dict[str, Any]]) -> None:
    """One line per model and date (scripts parse these: the counts stay plain numbers)."""
    by_date: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_date.setdefault(r["date"], []).append(r)
    for p in plan:
        if not p.runs:
            click.echo(f"no model is due on {p.day}")
            continue
        for r in by_date.get(p.day.isoformat(), []):
            done = (
                f", {r['rows']} rows in {duration(r['seconds'])}"
                if r["rows"] is not None and r["seconds"] is not None
                else ""
            )
            joined = f" (joined batch {r['batch_id']})" if r["joined"] else ""
            error = f"\n  error: {r['error']}" if r["error"] else ""
            click.echo(
                f"{r['model']} (id {r['model_id']}) {r['date']}: {r['status']}{joined}{done}{error}"
            )
