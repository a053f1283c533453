"""The demo's 30 days of history, made by the daemon itself.

Nothing here writes a run, a score or a DQ result: the dates are planned by the daemon's
planner (Daemon.run_models) and scored by its batch runner (runner.run_job, the path of
`mldropd run --from/--to`), so every row, score partition, DQ result and report e-mail is the
product's own. What the demo adds are the events of the stories (mldropd.demo_story), in order:

1. days 0-15 are backfilled as one job: every model ok, one report;
2. days 16-20: churn_lgbm's inputs swing (DQ warnings), fraud_rules' shift (a warning), one
   report; then fraud_rules' owner pauses it (ModelService.update, the API's PATCH);
3. days 21-28: churn_lgbm crosses the alert threshold, one report;
4. today: the faulty export (basket_size renamed) fails upsell_logreg's run, one report that
   says a retry is scheduled;
5. the export is repaired and the retry runs (trigger retry, attempt 2): it succeeds, and its
   report says so.

The retry is planned as soon as the slice is repaired instead of after [scheduler] retry_delay.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

from sqlmodel import Session, select

from mldropd.batch.plan import due_models
from mldropd.daemon import Daemon
from mldropd.demo_story import (
    BROKEN_DAY,
    DAYS,
    PAUSE_AFTER,
    PAUSED,
    RETRIED,
    SWING_FROM,
    write_slice,
)
from mldropd.records import Model, User
from mldropd.services import Services
from mldropd.states import Trigger

HISTORY_MARK = "history-built"  # written last: its absence means no (or half a) history
# Day ranges scored as one job each (one report each): the quiet weeks, the warnings, the
# alerts, today.
PHASES = [
    (0, SWING_FROM),
    (SWING_FROM + 1, PAUSE_AFTER),
    (PAUSE_AFTER + 1, BROKEN_DAY - 1),
    (BROKEN_DAY, BROKEN_DAY),
]


class DemoHomeError(Exception):
    """The demo home cannot be used as it is; the message says what to do."""


def history_built(home: Path) -> bool:
    return (home / HISTORY_MARK).exists()


def check_home(home: Path) -> None:
    """Refuse a home with a database but no finished history (interrupted, or made by an
    older mldropd whose demo had no stories): its data would not fit the stories."""
    if (home / "mldropd.db").exists() and not history_built(home):
        raise DemoHomeError(
            f"the demo home {home} has a database but no finished 30-day history (the build "
            "was interrupted, or an older mldropd made it); remove the folder "
            f"(rm -r {home}) and start the demo again"
        )


def build_history(
    daemon: Daemon,
    user: User,
    home: Path,
    start: dt.date,
    progress: Callable[[str], None] = lambda line: None,
) -> float:
    """Play the stories from `start` (day 0) to day DAYS - 1; return the seconds it took."""
    began = time.monotonic()
    features = Path(daemon.settings.features.path)
    day = [start + dt.timedelta(days=i) for i in range(DAYS)]
    today = day[-1]
    n_entities = _rows(features, today)
    # One fork server for the whole build: its model hosts are forked, never re-imported.
    daemon.runner.inline_sandboxes = daemon.sandboxes()
    write_slice(features, n_entities, BROKEN_DAY, today, broken=True)  # the faulty export
    for number, (first, last) in enumerate(PHASES, 1):
        progress(f"scoring {day[first]} to {day[last]} ({number} of {len(PHASES) + 1}) ...")
        _score(daemon, day[first : last + 1], today)
        if last == PAUSE_AFTER:
            paused = _model(daemon, user, PAUSED)
            assert paused.id is not None
            Services.of(daemon).models.update(user, paused.id, {"status": "paused"})
    progress(f"repairing the {today} slice and retrying {RETRIED} ...")
    write_slice(features, n_entities, BROKEN_DAY, today)
    retried = _model(daemon, user, RETRIED)
    batch_id, _ = daemon.run_models(today, [retried], Trigger.RETRY, submit=False)
    if batch_id is not None:
        daemon.runner.run_job([batch_id])
    (home / HISTORY_MARK).write_text(f"{day[0]} {today}\n")
    return time.monotonic() - began


def _rows(features: Path, day: dt.date) -> int:
    """Customers per day of the home (the slices were written before the history)."""
    import pyarrow.parquet as pq

    slice_file = features / f"dt={day.isoformat()}" / "part-0.parquet"
    return int(pq.read_metadata(slice_file).num_rows)


def _model(daemon: Daemon, user: User, name: str) -> Model:
    with Session(daemon.engine) as s:
        model = s.exec(select(Model).where(Model.owner_id == user.id, Model.name == name)).first()
    if model is None:
        raise DemoHomeError(f"the demo model {name} is not registered; start the demo again")
    return model


def _score(daemon: Daemon, dates: list[dt.date], today: dt.date) -> None:
    """Plan each date's due models (as `mldropd run --from/--to` does) and run them as one job:
    the models load once for all the dates, and every owner gets one report."""
    batch_ids = []
    for day in dates:
        with Session(daemon.engine) as s:
            models = due_models(s, day)
        trigger = Trigger.MANUAL if day == today else Trigger.BACKFILL
        batch_id, _ = daemon.run_models(day, models, trigger, submit=False)
        if batch_id is not None:
            batch_ids.append(batch_id)
    if batch_ids:
        daemon.runner.run_job(batch_ids)
