"""RunService: asking for scores (now, a past date, a range of dates, the failed ones again), the
runs as the API shows them, and the DQ gate's publish and discard.

A run request follows the same rules through every door (API, page, `mldropd run`): dates are
today or past ones, a range covers at most MAX_DAYS days, each date is one batch planned in one
transaction together with one audit row per model it covers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from mldropd import audit
from mldropd.batch import gate
from mldropd.batch.plan import due_models, plan_batch
from mldropd.db import session_scope
from mldropd.errors import FieldError, ValidationFailed
from mldropd.records import BatchRun, DQResult, ModelRun
from mldropd.services import views
from mldropd.services.access import MAX_ID, Caller, models_of, owned_model_ids, run_of
from mldropd.services.schemas import RequestedOut, RunOut
from mldropd.settings import Settings
from mldropd.states import ModelRunStatus, Phase, Trigger

MAX_DAYS = 367  # a backfill covers at most a year and a day
MAX_LIST = 1000  # runs in one answer of `list`


def run_dates(
    today: dt.date,
    *,
    day: dt.date | None = None,
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> list[dt.date]:
    """The dates of a run request, oldest first: `day` (default today), or every date from
    `first` to `last` (default today). Fields named as the API names them (the CLI's options
    are --date, --from, --to)."""
    if first is not None and day is not None:
        raise ValidationFailed(
            [FieldError("date", "give either `date` or `from` (and `to`), not both")]
        )
    if first is None:
        days = [day or today]
    else:
        end = last or today
        if end < first:
            raise ValidationFailed([FieldError("to", f"{end} is before {first}")])
        if (end - first).days >= MAX_DAYS:
            asked = (end - first).days + 1
            raise ValidationFailed(
                [
                    FieldError(
                        "from",
                        f"{first} to {end} is {asked} days; a backfill covers at most "
                        f"{MAX_DAYS} days (split it into several)",
                    )
                ]
            )
        days = [first + dt.timedelta(days=i) for i in range((end - first).days + 1)]
    if days[-1] > today:
        raise ValidationFailed(
            [
                FieldError(
                    "date" if first is None else "to",
                    f"{days[-1]} is in the future; scores are made for today or past dates",
                )
            ]
        )
    return days


@dataclass(frozen=True)
class Planned:
    """One date of a run request: the batch planned for it (None: nothing new to score, every
    model is covered by a run in progress or, for due models, one that succeeded) and the run
    that covers each model."""

    day: dt.date
    batch_id: int | None
    runs: dict[int, ModelRun] = field(default_factory=dict)  # model id -> its run
    names: dict[int, str] = field(default_factory=dict)  # model id -> its name

    def requested(self) -> list[RequestedOut]:
        return [
            {
                "run_id": run.id or 0,
                "model_id": model_id,
                "date": self.day.isoformat(),
                "status": run.status,
            }
            for model_id, run in self.runs.items()
        ]


class RunService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        today: Callable[[], dt.date],
        submit: Callable[[int], None] | None = None,
    ) -> None:
        """today: the date in the scheduler's time zone; submit: queue a planned batch on the
        daemon's runner (None: the caller runs its batches itself, as `mldropd run` does)."""
        self.engine, self.settings, self.today, self.submit = engine, settings, today, submit

    # -- asking for scores ---------------------------------------------------------------------
    def request(
        self,
        caller: Caller,
        model_ids: list[int] | None,
        *,
        day: dt.date | None = None,
        first: dt.date | None = None,
        last: dt.date | None = None,
        queue: bool = True,
    ) -> list[Planned]:
        """Score the models on the dates (run_dates), oldest first; None for model_ids: every
        active model due on each date, as the sweep chooses them.

        Asked-for models are scored again even if they succeeded for the date (due models are
        not); a model already being scored for a date joins that run. A date planned today is
        a manual run, an older one a backfill. queue: hand each batch to the daemon's runner."""
        today = self.today()
        days = run_dates(today, day=day, first=first, last=last)
        return [
            self._plan(caller, model_ids, d, Trigger.MANUAL if d == today else Trigger.BACKFILL,
                       force=model_ids is not None, action="run.request", queue=queue)
            for d in days
        ]  # fmt: skip

    def rerun_failed(self, caller: Caller, day: dt.date) -> Planned:
        """Score again, now, every model of the caller's whose newest run of `day` failed."""
        with Session(self.engine) as s:
            query = select(ModelRun).where(ModelRun.date == day).order_by(col(ModelRun.id))
            owned = owned_model_ids(caller)
            if owned is not None:
                query = query.where(col(ModelRun.model_id).in_(owned))
            latest = {r.model_id: r for r in s.exec(query)}
        failed = [m for m, r in latest.items() if r.status == ModelRunStatus.FAILED]
        if not failed:
            return Planned(day, None)
        return self._plan(
            caller, failed, day, Trigger.MANUAL, force=False, action="run.rerun_failed", queue=True
        )

    def _plan(
        self,
        caller: Caller,
        model_ids: list[int] | None,
        day: dt.date,
        trigger: Trigger,
        *,
        force: bool,
        action: str,
        queue: bool,
    ) -> Planned:
        """One date: the batch and its audit rows in one transaction, then queued."""
        with session_scope(self.engine) as s:
            models = (
                models_of(s, caller, model_ids) if model_ids is not None else due_models(s, day)
            )
            if not models:
                return Planned(day, None)
            batch, covered = plan_batch(s, day, trigger, models, force=force)
            for model_id, run in covered.items():
                audit.record(
                    s,
                    caller.email,
                    action,
                    f"model:{model_id}",
                    run_id=run.id,
                    date=run.date,
                    trigger=run.trigger,
                )
            names = {m.id or 0: m.name for m in models}
        batch_id = batch.id if batch is not None else None
        if batch_id is not None and queue and self.submit is not None:
            self.submit(batch_id)
        return Planned(day, batch_id, covered, names)

    # -- runs as the API shows them ------------------------------------------------------------
    def list(
        self,
        caller: Caller,
        *,
        model_id: int | None = None,
        day: dt.date | None = None,
        limit: int = 200,
    ) -> list[RunOut]:
        """The caller's model runs, newest first (of one model, of one date)."""
        if model_id is not None and not 0 < model_id <= MAX_ID:
            return []  # no such model can exist
        query = (
            select(ModelRun).order_by(col(ModelRun.id).desc()).limit(max(1, min(limit, MAX_LIST)))
        )
        owned = owned_model_ids(caller)
        if owned is not None:
            query = query.where(col(ModelRun.model_id).in_(owned))
        if model_id is not None:
            query = query.where(ModelRun.model_id == model_id)
        if day is not None:
            query = query.where(ModelRun.date == day)
        with Session(self.engine) as s:
            return [views.run_json(r) for r in s.exec(query)]

    def get(self, caller: Caller, run_id: int) -> RunOut:
        """One run of the caller's models; another user's run is not found."""
        with Session(self.engine) as s:
            return views.run_json(run_of(s, caller, run_id))

    # -- the DQ gate ---------------------------------------------------------------------------
    def publish(self, caller: Caller, run_id: int, *, model_id: int | None = None) -> RunOut:
        """Publish the scores the DQ gate held back (of `model_id`'s run, when given)."""
        return self._settle_held(caller, run_id, model_id, gate.publish_held, "run.publish")

    def discard(self, caller: Caller, run_id: int, *, model_id: int | None = None) -> RunOut:
        """Discard the held scores; the run counts as failed, so the date can be scored again."""
        return self._settle_held(caller, run_id, model_id, gate.discard_held, "run.discard")

    def _settle_held(
        self,
        caller: Caller,
        run_id: int,
        model_id: int | None,
        settle: Callable[[Settings, ModelRun, str], object],
        action: str,
    ) -> RunOut:
        with session_scope(self.engine) as s:
            run = run_of(s, caller, run_id, model_id)
            settle(self.settings, run, caller.email)
            audit.record(
                s, caller.email, action, f"run:{run_id}", model_id=run.model_id, date=run.date
            )
        return views.run_json(run)

    # -- what `mldropd run` follows --------------------------------------------------------------
    def runs_by_id(self, run_ids: Iterable[int]) -> dict[int, ModelRun]:
        """The model runs of these ids (any number of them)."""
        ids, found = list(run_ids), dict[int, ModelRun]()
        with Session(self.engine) as s:
            for start in range(0, len(ids), 500):  # far below SQLite's bound on parameters
                query = select(ModelRun).where(col(ModelRun.id).in_(ids[start : start + 500]))
                found.update((r.id or 0, r) for r in s.exec(query))
        return found

    def batch(self, batch_id: int) -> BatchRun | None:
        with Session(self.engine) as s:
            return s.get(BatchRun, batch_id)

    def batch_phases(self, batch_ids: Iterable[int]) -> dict[int, Phase | None]:
        """Where each of these batches is (running ones have a phase)."""
        with Session(self.engine) as s:
            query = select(BatchRun.id, BatchRun.phase).where(col(BatchRun.id).in_(list(batch_ids)))
            return {batch_id or 0: Phase(p) if p else None for batch_id, p in s.exec(query)}

    def dq_by_run(self, run_ids: Iterable[int]) -> dict[int, DQResult]:
        """The DQ result of each of these runs that has one."""
        ids, found = list(run_ids), dict[int, DQResult]()
        with Session(self.engine) as s:
            for start in range(0, len(ids), 500):
                query = select(DQResult).where(
                    col(DQResult.model_run_id).in_(ids[start : start + 500])
                )
                found.update((d.model_run_id, d) for d in s.exec(query))
        return found
