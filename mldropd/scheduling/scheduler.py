"""APScheduler 3 with its SQLite job store: jobs survive restarts and are added only once.

Deliberate settings (see NOTES.md): coalesce=True so a restart after downtime fires a missed
job once, not once per missed time; misfire_grace_time from config so a late sweep still runs;
jobs are added only when missing, because re-adding recomputes the next fire time from now and
silently drops runs missed while the daemon was down.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from mldropd.scheduling.schedules import parse_cron
from mldropd.settings import Settings

log = logging.getLogger(__name__)
SWEEP_JOB = "sweep"
OUTBOX_JOB = "deliver-outbox"


def build_scheduler(settings: Settings) -> BackgroundScheduler:
    """A scheduler whose jobs live in the daemon's SQLite database."""
    store = SQLAlchemyJobStore(
        url=f"sqlite:///{settings.database.path}",
        tablename="apscheduler_jobs",
        engine_options={"connect_args": {"timeout": 30}},
    )
    return BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": ThreadPoolExecutor(4)},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": settings.scheduler.misfire_grace_s,
        },
        timezone=settings.scheduler.timezone,
    )


def ensure_jobs(scheduler: BackgroundScheduler, settings: Settings) -> None:
    """Add the sweep and outbox jobs if missing; follow a changed sweep cron from the config."""
    trigger = parse_cron(settings.scheduler.sweep, settings.scheduler.timezone)
    job = scheduler.get_job(SWEEP_JOB)
    if job is None:
        scheduler.add_job(
            "mldropd.scheduling.jobs:sweep", trigger=trigger, id=SWEEP_JOB, name="daily sweep"
        )
    elif str(job.trigger) != str(trigger):
        log.info("sweep schedule changed in the config: %s -> %s", job.trigger, trigger)
        scheduler.reschedule_job(SWEEP_JOB, trigger=trigger)
    if scheduler.get_job(OUTBOX_JOB) is None:
        scheduler.add_job(
            "mldropd.scheduling.jobs:deliver_outbox",
            trigger=IntervalTrigger(seconds=60),
            id=OUTBOX_JOB,
            name="deliver report emails",
        )


def add_retry(
    scheduler: BackgroundScheduler, day: dt.date, model_ids: list[int], when: dt.datetime
) -> None:
    """A persisted one-off job retrying failed models of a date."""
    ids = sorted(set(model_ids))
    job_id = f"retry-{day.isoformat()}-{when:%Y%m%dT%H%M%S}-{'-'.join(map(str, ids))}"
    if scheduler.get_job(job_id) is None:
        scheduler.add_job(
            "mldropd.scheduling.jobs:retry",
            trigger=DateTrigger(when),
            args=[day.isoformat(), ids],
            id=job_id,
            name=f"retry {day} models {ids}",
            misfire_grace_time=None,
        )


def add_resume(scheduler: BackgroundScheduler, batch_id: int, when: dt.datetime) -> None:
    """A persisted one-off job running a batch that waits for late data again."""
    job_id = f"resume-{batch_id}"
    trigger = DateTrigger(when)
    if scheduler.get_job(job_id) is None:
        scheduler.add_job(
            "mldropd.scheduling.jobs:resume",
            trigger=trigger,
            args=[batch_id],
            id=job_id,
            name=f"resume batch {batch_id}",
            misfire_grace_time=None,
        )
    else:
        scheduler.reschedule_job(job_id, trigger=trigger)


def sweep_dates_between(settings: Settings, start: dt.date, now: dt.datetime) -> list[dt.date]:
    """Dates from start to now's date whose sweep time has passed by now (oldest first)."""
    trigger = parse_cron(settings.scheduler.sweep, settings.scheduler.timezone)
    tz = now.tzinfo
    dates = []
    day = start
    while day <= now.date():
        midnight = dt.datetime.combine(day, dt.time(), tzinfo=tz)
        fire = trigger.get_next_fire_time(None, midnight)
        if fire is not None and fire.date() == day and fire <= now:
            dates.append(day)
        day += dt.timedelta(days=1)
    return dates


def sweep_fire_time(settings: Settings, now: dt.datetime) -> dt.datetime | None:
    """The next time the sweep fires at or after now."""
    return _trigger(settings.scheduler.sweep, settings.scheduler.timezone).get_next_fire_time(
        None, now
    )


@functools.lru_cache(maxsize=16)
def _trigger(cron: str, timezone: str) -> CronTrigger:
    """Triggers are immutable: every model list asks for the sweep's next fire time."""
    return parse_cron(cron, timezone)
