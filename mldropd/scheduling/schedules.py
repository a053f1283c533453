"""Model schedules: parse `daily`, `weekly:<day>`, `monthly:<n>` or cron, and list due dates.

Cron strings use standard (Vixie) cron numbering: minute hour day-of-month month day-of-week,
day-of-week 0 or 7 = Sunday, 1 = Monday, or the names mon..sun. APScheduler 3's
`CronTrigger.from_crontab` passes day-of-week numbers through unchanged, where 0 = Monday (a
known trap, fixed only in APScheduler 4), and its `*/2` or `0-6` would also be read in its own
numbering. So we expand every field to the set of values it allows ourselves and hand
APScheduler explicit lists with weekday *names*.

Day-of-month AND day-of-week: when both are restricted (e.g. `0 6 13 * 5`), mldropd requires
BOTH to match, as APScheduler does ("every Friday the 13th"); Vixie cron would fire when
EITHER matches. We keep APScheduler's AND so that a schedule's due dates and a trigger built
from the same string always agree.
"""

from __future__ import annotations

import calendar
import datetime
import re
from dataclasses import dataclass, field

from apscheduler.triggers.cron import CronTrigger

# Cron day-of-week numbers (0 = Sunday) -> APScheduler weekday names.
_APS_DAY = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DAY_NAMES = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
_MONTH_ABBR = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_ACCEPTED = (
    "use daily, weekly:<mon..sun>, monthly:<1..28> or a 5-field cron string such as '0 6 * * 1-5'"
)
_SEARCH_DAYS = 5 * 366  # next_due gives up after about five years
_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts '²'
_ITEM = re.compile(r"^(?:(?P<all>\*)|(?P<a>\w+)(?:-(?P<b>\w+))?)(?:/(?P<step>\d+))?$")


class ScheduleError(ValueError):
    """A schedule or cron string that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class _Field:
    name: str
    lo: int
    hi: int
    names: dict[str, int]
    hint: str


_FIELDS = (
    _Field("minute", 0, 59, {}, "0-59"),
    _Field("hour", 0, 23, {}, "0-23"),
    _Field("day-of-month", 1, 31, {}, "1-31"),
    _Field("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTH_ABBR)}, "1-12 or jan..dec"),
    _Field(
        "day-of-week",
        0,
        7,
        {d: i for i, d in enumerate(_APS_DAY)},
        "0-7 (0 or 7 = Sunday, 1 = Monday) or sun..sat",
    ),
)


@dataclass(frozen=True)
class _Spec:
    """The sets of values a schedule allows, in cron terms (weekday 0 = Sunday)."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    def matches(self, day: datetime.date) -> bool:
        # date.weekday() is 0 = Monday; cron's is 0 = Sunday.
        return (
            day.month in self.months
            and day.day in self.days
            and (day.weekday() + 1) % 7 in self.weekdays
        )


_ALL = _Spec(
    frozenset(range(60)),
    frozenset(range(24)),
    frozenset(range(1, 32)),
    frozenset(range(1, 13)),
    frozenset(range(7)),
)


def _value(token: str, fld: _Field, item: str, text: str) -> int:
    if _DIGITS.fullmatch(token):
        number = int(token)
    elif token.lower() in fld.names:
        number = fld.names[token.lower()]
    else:
        raise ScheduleError(
            f"{fld.name} '{item}' in cron string '{text}' is not understood: "
            f"{fld.name} takes {fld.hint}"
        )
    if not fld.lo <= number <= fld.hi:
        raise ScheduleError(
            f"{fld.name} '{item}' in cron string '{text}' is out of range: "
            f"{fld.name} takes {fld.hint}"
        )
    return number


def _parse_field(raw: str, fld: _Field, text: str) -> frozenset[int]:
    values: set[int] = set()
    for item in raw.split(","):
        match = _ITEM.match(item)
        if not match:
            raise ScheduleError(
                f"{fld.name} '{item or raw}' in cron string '{text}' is not understood: use a "
                f"number, a range a-b, a list a,b, * or a step */n; {fld.name} takes {fld.hint}"
            )
        step = int(match["step"]) if match["step"] else 1
        if step == 0:
            raise ScheduleError(f"{fld.name} '{item}' in cron string '{text}' has a step of 0")
        top = 6 if fld.name == "day-of-week" else fld.hi  # 7 is only an alias of Sunday
        if match["all"]:
            first, last = fld.lo, top
        else:
            first = _value(match["a"], fld, item, text)
            # "a/n" means a, a+n, ... up to the field's maximum (as in most cron dialects).
            last = (
                _value(match["b"], fld, item, text)
                if match["b"]
                else (top if match["step"] else first)
            )
            if fld.name == "day-of-week" and match["b"] and last == 0 < first:
                last = 7  # "sat-sun" / "5-0": a range ending on Sunday
            if first > last:
                raise ScheduleError(
                    f"{fld.name} range '{item}' in cron string '{text}' runs backwards: "
                    f"write the smaller value first"
                )
        values.update(range(first, last + 1, step))
    if fld.name == "day-of-week" and 7 in values:  # 7 is Sunday, like 0
        values = (values - {7}) | {0}
    return frozenset(values)


def _parse_spec(text: str) -> _Spec:
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(
            f"cron string '{text}' has {len(parts)} field{'s' if len(parts) != 1 else ''}; "
            "it needs 5: minute hour day-of-month month day-of-week, such as '0 6 * * 1-5'"
        )
    spec = _Spec(*(_parse_field(raw, fld, text) for raw, fld in zip(parts, _FIELDS, strict=True)))
    # Refuse dates that never exist (e.g. 30 February) instead of a schedule that never fires.
    if not any(d <= calendar.monthrange(2000, m)[1] for m in spec.months for d in spec.days):
        raise ScheduleError(
            f"cron string '{text}' never fires: no month in it has those days of the month"
        )
    return spec


def _aps_list(values: frozenset[int], full: frozenset[int], label: tuple[str, ...] = ()) -> str:
    if values == full:
        return "*"
    return ",".join(label[v] if label else str(v) for v in sorted(values))


def parse_cron(text: str, timezone: str = "UTC") -> CronTrigger:
    """Parse a standard 5-field cron string into an APScheduler trigger (0 or 7 = Sunday)."""
    spec = _parse_spec(text.strip())
    try:
        return CronTrigger(
            minute=_aps_list(spec.minutes, _ALL.minutes),
            hour=_aps_list(spec.hours, _ALL.hours),
            day=_aps_list(spec.days, _ALL.days),
            month=_aps_list(spec.months, _ALL.months),
            day_of_week=_aps_list(spec.weekdays, _ALL.weekdays, _APS_DAY),
            timezone=timezone,
        )
    except Exception as exc:  # e.g. an unknown time zone
        raise ScheduleError(f"cron string '{text}' cannot be scheduled: {exc}") from None


def _join(words: list[str], last: str = "and") -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {last} {words[-1]}"


def _words(values: list[int], label: tuple[str, ...] | None = None, wrap: int = 0) -> list[str]:
    """Name values in the given order, folding runs of three or more into 'a to b'."""
    runs: list[list[int]] = []
    for v in values:
        # With wrap=7 (weekdays listed Monday first) Saturday (6) -> Sunday (0) is a run too.
        if runs and v == (runs[-1][-1] + 1) % (wrap or 10**9):
            runs[-1].append(v)
        else:
            runs.append([v])
    out: list[str] = []
    for run in runs:
        names = [label[v] if label else str(v) for v in run]
        out.extend([f"{names[0]} to {names[-1]}"] if len(run) >= 3 else names)
    return out


def _describe_spec(spec: _Spec) -> str:
    minutes, hours = sorted(spec.minutes), sorted(spec.hours)
    if len(minutes) * len(hours) <= 4:
        when = "at " + _join([f"{h:02d}:{m:02d}" for h in hours for m in minutes])
    else:
        steps = {b - a for a, b in zip(minutes, minutes[1:], strict=False)}
        if spec.minutes == _ALL.minutes:
            when = "every minute"
        elif minutes[0] == 0 and len(steps) == 1 and 60 % (step := steps.pop()) == 0:
            when = f"every {step} minutes"
        else:
            when = f"at minute{'s' if len(minutes) > 1 else ''} {_join(_words(minutes))}"
        if spec.hours != _ALL.hours:
            when += f" during hour{'s' if len(hours) > 1 else ''} {_join(_words(hours))}"
        elif not when.startswith("every"):
            when += " of every hour"
    parts: list[str] = []
    days_restricted = spec.days != _ALL.days
    if days_restricted:
        days = sorted(spec.days)
        parts.append(f"on day{'s' if len(days) > 1 else ''} {_join(_words(days))} of the month")
    if spec.weekdays != _ALL.weekdays:
        weekdays = sorted(spec.weekdays, key=lambda d: (d - 1) % 7)  # Monday first
        names = _words(weekdays, _DAY_NAMES, wrap=7)
        if days_restricted:
            parts.append(f"when that is a {_join(names, 'or')}")
        else:
            parts.append(f"on {_join(names)}")
    if spec.months != _ALL.months:
        months = sorted(spec.months)
        label = ("",) + tuple(calendar.month_name[1:])
        parts.append(f"in {_join(_words(months, label))}")
    return f"{when} {' '.join(parts) if parts else 'every day'}"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: which dates a model is due to be scored on."""

    text: str
    kind: str
    _spec: _Spec = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = _parse_spec(self.text) if self.kind == "cron" else _simple_spec(self.text, self.kind)
        object.__setattr__(self, "_spec", spec)

    def is_due(self, day: datetime.date) -> bool:
        """True if the schedule fires at any time during `day` (the day's fields only)."""
        return self._spec.matches(day)

    def next_due(self, after: datetime.date, inclusive: bool = True) -> datetime.date | None:
        """First due date on or after `after` (strictly after if not inclusive), within ~5 years."""
        day = after if inclusive else after + datetime.timedelta(days=1)
        for _ in range(_SEARCH_DAYS):
            if self._spec.matches(day):
                return day
            day += datetime.timedelta(days=1)
        return None

    def due_dates(self, start: datetime.date, end: datetime.date) -> list[datetime.date]:
        """Every due date from `start` to `end`, both included."""
        days = (end - start).days + 1
        dates = (start + datetime.timedelta(days=i) for i in range(max(days, 0)))
        return [d for d in dates if self._spec.matches(d)]

    def describe(self) -> str:
        """The schedule in plain words, e.g. 'every Monday' or 'at 06:00 on Monday to Friday'."""
        if self.kind == "daily":
            return "every day"
        if self.kind == "weekly":
            return f"every {_DAY_NAMES[next(iter(self._spec.weekdays))]}"
        if self.kind == "monthly":
            return f"on day {next(iter(self._spec.days))} of every month"
        return _describe_spec(self._spec)


def _simple_spec(text: str, expected_kind: str) -> _Spec:
    kind, _, arg = text.partition(":")
    if kind != expected_kind:
        raise ScheduleError(f"schedule '{text}' is not of kind '{expected_kind}'")
    if kind == "daily" and not arg:
        return _ALL
    if kind == "weekly" and arg in _APS_DAY:
        return _Spec(
            _ALL.minutes, _ALL.hours, _ALL.days, _ALL.months, frozenset({_APS_DAY.index(arg)})
        )
    if kind == "monthly" and _DIGITS.fullmatch(arg) and 1 <= int(arg) <= 28:
        return _Spec(_ALL.minutes, _ALL.hours, frozenset({int(arg)}), _ALL.months, _ALL.weekdays)
    raise ScheduleError(f"unknown schedule '{text}': {_ACCEPTED}")


def parse_schedule(text: str) -> Schedule:
    """Parse a model's `schedule` value; raise ScheduleError naming the bad part."""
    raw = text.strip()
    low = raw.lower()
    if not raw:
        raise ScheduleError(f"the schedule is empty: {_ACCEPTED}")
    if low == "daily":
        return Schedule("daily", "daily")
    kind, sep, arg = low.partition(":")
    arg = arg.strip()
    if sep and kind.strip() == "weekly":
        day = arg[:3] if arg in (n.lower() for n in _DAY_NAMES) else arg
        if day not in _APS_DAY:
            raise ScheduleError(
                f"unknown day '{arg}' in schedule '{raw}': use weekly:<mon..sun>, "
                "e.g. weekly:mon or weekly:monday"
            )
        return Schedule(f"weekly:{day}", "weekly")
    if sep and kind.strip() == "monthly":
        if not _DIGITS.fullmatch(arg) or not 1 <= int(arg) <= 28:
            raise ScheduleError(
                f"day '{arg}' in schedule '{raw}' must be a whole number from 1 to 28 "
                "(a day that every month has), e.g. monthly:15"
            )
        return Schedule(f"monthly:{int(arg)}", "monthly")
    # Digits, "*" or five words: the user meant a cron string, so explain cron problems.
    if low[0].isdigit() or low[0] == "*" or len(raw.split()) == 5:
        spaced = " ".join(raw.split())
        _parse_spec(spaced)  # errors quote the user's own spelling
        return Schedule(spaced.lower(), "cron")
    raise ScheduleError(f"unknown schedule '{raw}': {_ACCEPTED}")
