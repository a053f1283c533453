"""The deploy form's schedule picker: split a schedule into picker parts and preview it in words."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mldropd.scheduling.scheduler import sweep_fire_time
from mldropd.scheduling.schedules import ScheduleError, parse_schedule
from mldropd.settings import Settings

WEEKDAYS = [
    ("mon", "Monday"),
    ("tue", "Tuesday"),
    ("wed", "Wednesday"),
    ("thu", "Thursday"),
    ("fri", "Friday"),
    ("sat", "Saturday"),
    ("sun", "Sunday"),
]


@dataclass(frozen=True)
class Preview:
    """A schedule in plain words with its next due date, or what is wrong with it."""

    schedule: str
    text: str = ""
    next_date: dt.date | None = None
    error: str = ""


def preview(schedule: str, settings: Settings, now: dt.datetime) -> Preview:
    """Describe a schedule and the date of the first sweep that would score it."""
    try:
        parsed = parse_schedule(schedule)
    except ScheduleError as exc:
        return Preview(schedule, error=str(exc))
    fire = sweep_fire_time(settings, now)
    return Preview(
        parsed.text, parsed.describe(), parsed.next_due(fire.date()) if fire is not None else None
    )


def parts(schedule: str | None) -> dict[str, str]:
    """The picker's fields for a schedule string: kind, weekday, monthday, cron."""
    text = (schedule or "daily").strip()
    kind, _, arg = text.partition(":")
    out = {"kind": "daily", "weekday": "mon", "monthday": "1", "cron": ""}
    if kind == "weekly" and arg in dict(WEEKDAYS):
        out.update(kind="weekly", weekday=arg)
    elif kind == "monthly" and arg.isdigit():
        out.update(kind="monthly", monthday=arg)
    elif text != "daily":
        out.update(kind="cron", cron=text)
    return out
