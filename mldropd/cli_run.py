"""`mldropd run`: score dates in the foreground, join runs in progress, or only plan a batch."""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mldropd.cli_common import config_option, load_config
from mldropd.errors import MldropdError, ValidationFailed

if TYPE_CHECKING:
    from mldropd.cli_progress import DatePlan


def _parse_day(value: str, hint: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=hint) from None


@click.command()
@click.option(
    "--date", "day", help="Run date YYYY-MM-DD (default: today in the scheduler's time zone)."
)
@click.option("--from", "first", help="Backfill from this date (YYYY-MM-DD), oldest first.")
@click.option("--to", "last", help="Backfill up to this date, included (default: today).")
@click.option(
    "--model",
    "model_ids",
    type=int,
    multiple=True,
    help="Model id to score (repeatable). Default: every active model due on the date.",
)
@click.option(
    "--plan-only",
    is_flag=True,
    help="Only plan: create the pending batch and print its id (for spark-submit), one a line.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress display: only the outcome, one line per model and date.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the outcome as one JSON document (messages go to stderr).",
)
@config_option
def run(
    day: str | None,
    first: str | None,
    last: str | None,
    model_ids: tuple[int, ...],
    plan_only: bool,
    quiet: bool,
    as_json: bool,
    config: str | None,
) -> None:
    """Score now in the foreground, as the sweep would; exits 1 if a model failed.

    With --from/--to, every date of the range is scored in turn (a backfill). Without --model,
    models already scored for a date are not scored again; with --model they are rescored.
    A model already being scored for the date (by the daemon or another `mldropd run`) is
    joined: the command waits for that run and prints its outcome.

    On a terminal a live display shows the dates done, the phase, rows, rate and time left,
    then a table of models x dates; elsewhere (or with --quiet) plain lines.
    """
    settings = load_config(config)
    if day and (first or last):
        raise click.UsageError("use either --date or --from/--to")
    if plan_only and as_json:
        raise click.UsageError("--plan-only prints the batch ids alone, one a line: drop --json")
    dates = {
        "day": _parse_day(day, "--date") if day else None,
        "first": _parse_day(first, "--from") if first else None,
        "last": _parse_day(last, "--to") if last else None,
    }
    # First of all: the fork server imports the batch job's libraries while this process
    # imports its own (the database's) and plans.
    sandboxes = None if plan_only else _start_sandboxes(settings)
    try:
        _run(settings, dates, model_ids, sandboxes, plan_only, quiet, as_json, config)
    finally:  # it ends its forks itself; no need to wait
        if sandboxes is not None:
            sandboxes.stop(wait=False)


def _run(
    settings: Any,
    dates: dict[str, dt.date | None],
    model_ids: tuple[int, ...],
    sandboxes: Any,
    plan_only: bool,
    quiet: bool,
    as_json: bool,
    config: str | None,
) -> None:
    from mldropd import cli_progress as show
    from mldropd.daemon import Daemon
    from mldropd.sandbox.forkserver import ForkServerError
    from mldropd.services import Services, cli

    daemon = Daemon(settings, with_scheduler=False)
    services = Services.build(daemon.engine, settings)  # no queue: the batches run from here
    caller = cli()
    try:  # the rules of a run request are the service's, as for the API and the pages
        planned = services.runs.request(caller, list(model_ids) or None, **dates, queue=False)
    except ValidationFailed as exc:
        problem = exc.errors[0]
        raise click.BadParameter(problem.message, param_hint=_OPTIONS[problem.field]) from None
    except MldropdError as exc:  # a model id that does not exist
        raise click.ClickException(exc.message) from None
    if plan_only:
        for p in planned:
            _print_planned(p, config)
        daemon.engine.dispose()
        return
    plan = [
        show.DatePlan(
            p.day,
            runs={m: r.id or 0 for m, r in p.runs.items()},
            names=p.names,
            batch_id=p.batch_id,
        )
        for p in planned
    ]
    ours = [p.batch_id for p in plan if p.batch_id is not None]
    daemon.runner.sandboxes = sandboxes  # the job is forked from it, as the daemon's jobs are
    if as_json:
        display = show.messages_only(err=True)
    elif quiet:
        display = show.messages_only(err=False)
    elif sys.stdout.isatty():
        display = show.live_display(services.runs, plan)
    else:
        display = show.plain_lines(services.runs, plan)
    try:
        with display as say:
            if len(ours) > 1:  # a backfill is one job: each owner's models load once, one report
                daemon.runner.run_job(ours, retries=False)
            for date_plan in plan:
                _settle(daemon, services.runs, date_plan, say)
    except ForkServerError as exc:  # the batch stays pending, for the daemon or a new run
        daemon.stop()
        raise click.ClickException(str(exc)) from None
    outcome = show.results(services.runs, plan)
    if as_json:
        show.print_json(plan, outcome)
    elif sys.stdout.isatty() and not quiet:
        show.print_table(plan, outcome)
    else:
        show.print_lines(plan, outcome)
    daemon.stop()
    _exit(1 if any(r["status"] != "succeeded" for r in outcome) else 0)


_OPTIONS = {"date": "--date", "from": "--from", "to": "--to"}  # the service's fields


def _start_sandboxes(settings: Any) -> Any:
    """The command's fork server, started before anything else: it probes the sandbox and
    imports the batch job's libraries (the DQ's among them) while this process plans. The
    batch job is forked from it (as the daemon's are), then asks it for its models' libraries
    (Engines.prepare), which it imports while the job prepares the batch."""
    from mldropd.engines import preload_for
    from mldropd.sandbox.setup import Sandboxes

    return Sandboxes.start(settings, wait=False, batch_jobs=True, preload=preload_for([]))


def _exit(code: int) -> None:
    """Leave at once: every file is closed and every line flushed; the interpreter's own tear-
    down of the data libraries (seconds for Arrow, DuckDB, scikit-learn) has nothing to add."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_planned(planned: Any, config: str | None) -> None:
    """--plan-only: a pending batch for spark-submit; its id alone on stdout, the rest on stderr."""
    if not planned.runs:
        click.echo(f"no model is due on {planned.day}", err=True)
        return
    for model_id, run in planned.runs.items():
        if run.batch_id != planned.batch_id:
            click.echo(
                f"{planned.names[model_id]} (id {model_id}) {planned.day}: already {run.status} "
                f"in batch {run.batch_id}; not planned again",
                err=True,
            )
    if planned.batch_id is None:
        return
    spec = importlib.util.find_spec("mldropd.jobs.score_batch")
    job = spec.origin if spec is not None else "score_batch.py"
    click.echo(
        f"planned batch {planned.batch_id} for {planned.day}; run it with:\n"
        f"  spark-submit --master <URL> {job} {Path(config or 'config.toml').resolve()} "
        f"{planned.batch_id}",
        err=True,
    )
    click.echo(str(planned.batch_id))


def _settle(daemon: Any, runs: Any, plan: DatePlan, say: Callable[[str], None]) -> None:
    """Score one planned date in the foreground (waiting for late data like the sensor, and for
    runs of the same models in progress elsewhere) until every model's run is over."""
    covering = [r.batch_id for r in runs.runs_by_id(plan.runs.values()).values()]
    batches = list(dict.fromkeys(([plan.batch_id] if plan.batch_id is not None else []) + covering))
    for other in batches:  # ours first, then the ones joined
        _follow(daemon, runs, other, plan.day, say, joined=other != plan.batch_id)


def _follow(
    daemon: Any,
    runs: Any,
    batch_id: int,
    run_date: dt.date,
    say: Callable[[str], None],
    *,
    joined: bool,
) -> None:
    """Until the batch is over: run it here unless another live process does (the runner claims
    it atomically), sleep through the sensor's waits, else poll the process that has it."""
    import time

    from mldropd.batch.plan import process_alive
    from mldropd.records import utcnow
    from mldropd.states import RunStatus

    told = False
    while True:
        daemon.runner.run(batch_id, retries=False)
        batch = runs.batch(batch_id)
        if batch is None or batch.status in (RunStatus.SUCCEEDED, RunStatus.FAILED):
            return
        mine = batch.runner_pid == os.getpid()
        if batch.status == RunStatus.PENDING and batch.not_before is not None and mine:
            wake = batch.not_before
            say(f"{run_date}: waiting for the feature slice until {wake:%H:%M:%S} UTC ...")
            time.sleep(max(0.0, (wake - utcnow()).total_seconds()))
            continue
        holder = batch.runner_pid
        if batch.status == RunStatus.RUNNING and not (
            process_alive(holder) or process_alive(batch.pid)
        ):
            say(
                f"{run_date}: batch {batch_id} was left running by process {holder}, which is "
                "gone; the daemon resumes it at its next start"
            )
            return
        if not told:
            who = "being scored" if batch.status == RunStatus.RUNNING else "planned"
            say(
                f"{run_date}: joined batch {batch_id}, {who} by process {holder}; waiting ..."
                if joined
                else f"{run_date}: batch {batch_id} is taken by process {holder}; waiting ..."
            )
            told = True
        time.sleep(1.0)


def register(main: click.Group) -> None:
    """Add `run` to the command group."""
    main.add_command(run)
