"""Schedules: due dates, standard cron day-of-week numbering, errors and descriptions."""

from __future__ import annotations

import calendar
import datetime as dt
import re

import pytest
from apscheduler.triggers.cron import CronTrigger
from hypothesis import given, settings
from hypothesis import strategies as st

from mldropd.scheduling.schedules import Schedule, ScheduleError, parse_cron, parse_schedule

D = dt.date
WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def year(y: int) -> tuple[D, D]:
    return D(y, 1, 1), D(y, 12, 31)


@pytest.mark.parametrize(("y", "days"), [(2025, 365), (2024, 366)])
def test_daily_is_due_every_day_of_the_year(y: int, days: int) -> None:
    dates = parse_schedule("daily").due_dates(*year(y))
    assert len(dates) == days
    assert dates[0] == D(y, 1, 1) and dates[-1] == D(y, 12, 31)


@pytest.mark.parametrize("index", range(7))
@pytest.mark.parametrize("y", [2024, 2025, 2026])
def test_weekly_is_due_on_that_weekday_only(index: int, y: int) -> None:
    sched = parse_schedule(f"weekly:{WEEKDAYS[index]}")
    dates = sched.due_dates(*year(y))
    assert {d.weekday() for d in dates} == {index}
    expected = sum(
        1
        for i in range(366)
        if (D(y, 1, 1) + dt.timedelta(i)).year == y
        and (D(y, 1, 1) + dt.timedelta(i)).weekday() == index
    )
    assert len(dates) == expected and len(dates) in (52, 53)


def test_weekly_accepts_full_names_and_any_case() -> None:
    assert parse_schedule(" Weekly:FRIDAY ").text == "weekly:fri"
    assert parse_schedule("weekly:Sun").text == "weekly:sun"


@pytest.mark.parametrize("n", [1, 15, 28])
def test_monthly_is_due_once_a_month_on_that_day(n: int) -> None:
    dates = parse_schedule(f"monthly:{n}").due_dates(*year(2024))
    assert dates == [D(2024, m, n) for m in range(1, 13)]


def test_monthly_normalises_leading_zero() -> None:
    assert parse_schedule("monthly:05").text == "monthly:5"


def test_cron_weekdays_use_standard_numbering() -> None:
    # APScheduler's from_crontab would read 1-5 as Tuesday..Saturday.
    dates = parse_schedule("0 6 * * 1-5").due_dates(*year(2025))
    assert {d.weekday() for d in dates} == {0, 1, 2, 3, 4}
    assert len(dates) == 261


@pytest.mark.parametrize("text", ["0 6 * * 0", "0 6 * * 7", "0 6 * * sun", "0 6 * * SUN"])
def test_cron_sunday_as_0_7_or_name(text: str) -> None:
    dates = parse_schedule(text).due_dates(*year(2025))
    assert len(dates) == 52 and {d.weekday() for d in dates} == {6}


def test_cron_days_of_month_list() -> None:
    dates = parse_schedule("0 6 1,15 * *").due_dates(*year(2025))
    assert dates == sorted(D(2025, m, d) for m in range(1, 13) for d in (1, 15))


def test_cron_day_of_month_step() -> None:
    dates = parse_schedule("0 6 */2 * *").due_dates(D(2025, 1, 1), D(2025, 2, 28))
    assert [d.day for d in dates if d.month == 1] == list(range(1, 32, 2))
    assert [d.day for d in dates if d.month == 2] == list(range(1, 29, 2))
    assert [d.day for d in parse_schedule("0 0 10-20/5 * *").due_dates(*year(2025))][:3] == [
        10,
        15,
        20,
    ]


def test_cron_day_of_week_step_and_ranges_in_cron_numbering() -> None:
    # */2 in cron numbering: Sunday, Tuesday, Thursday, Saturday.
    assert {d.weekday() for d in parse_schedule("0 0 * * */2").due_dates(*year(2025))} == {
        6,
        1,
        3,
        5,
    }
    # 5-7: Friday to Sunday; 0-6 and * are every day.
    assert {d.weekday() for d in parse_schedule("0 0 * * 5-7").due_dates(*year(2025))} == {4, 5, 6}
    assert len(parse_schedule("0 0 * * 0-6").due_dates(*year(2025))) == 365
    weekend = {5, 6}
    for text in ("0 0 * * sat-sun", "0 0 * * 6-7", "0 0 * * 6-0"):
        assert {d.weekday() for d in parse_schedule(text).due_dates(*year(2025))} == weekend
    assert {d.weekday() for d in parse_schedule("0 0 * * 1/2").due_dates(*year(2025))} == {
        0,
        2,
        4,
    }
    assert {d.weekday() for d in parse_schedule("0 0 * * mon-fri").due_dates(*year(2025))} == {
        0,
        1,
        2,
        3,
        4,
    }


def test_cron_month_and_both_day_fields_must_match() -> None:
    # AND semantics, as in APScheduler: Fridays that are the 13th.
    dates = parse_schedule("0 0 13 * 5").due_dates(D(2024, 1, 1), D(2026, 12, 31))
    assert dates == [
        D(2024, 9, 13),
        D(2024, 12, 13),
        D(2025, 6, 13),
        D(2026, 2, 13),
        D(2026, 3, 13),
        D(2026, 11, 13),
    ]
    assert parse_schedule("0 0 1 jan,jul *").due_dates(*year(2025)) == [
        D(2025, 1, 1),
        D(2025, 7, 1),
    ]


def test_next_due_across_month_and_year_boundaries() -> None:
    monthly = parse_schedule("monthly:15")
    assert monthly.next_due(D(2024, 12, 16)) == D(2025, 1, 15)
    assert monthly.next_due(D(2025, 1, 15)) == D(2025, 1, 15)
    assert monthly.next_due(D(2025, 1, 15), inclusive=False) == D(2025, 2, 15)
    weekly = parse_schedule("weekly:mon")
    assert weekly.next_due(D(2024, 12, 31)) == D(2025, 1, 6)
    assert parse_schedule("daily").next_due(D(2024, 12, 31), inclusive=False) == D(2025, 1, 1)
    assert parse_schedule("0 6 31 * *").next_due(D(2025, 4, 1)) == D(2025, 5, 31)


def test_next_due_leap_day() -> None:
    leap = parse_schedule("0 0 29 2 *")
    assert leap.next_due(D(2024, 1, 1)) == D(2024, 2, 29)
    assert leap.next_due(D(2024, 2, 29), inclusive=False) == D(2028, 2, 29)
    assert parse_schedule("daily").next_due(D(2024, 2, 28), inclusive=False) == D(2024, 2, 29)
    assert parse_schedule("monthly:28").next_due(D(2024, 2, 29)) == D(2024, 3, 28)


def test_next_due_gives_up_after_about_five_years() -> None:
    # Monday 29 February: 2016, then 2044 - beyond the search horizon from 2017.
    assert parse_schedule("0 0 29 2 1").next_due(D(2017, 1, 1)) is None
    assert parse_schedule("0 0 29 2 1").next_due(D(2015, 6, 1)) == D(2016, 2, 29)


def test_due_dates_empty_when_range_is_backwards() -> None:
    assert parse_schedule("daily").due_dates(D(2025, 2, 1), D(2025, 1, 1)) == []


def test_cron_text_is_normalised() -> None:
    sched = parse_schedule("  0  6 *  * MON-FRI ")
    assert (sched.text, sched.kind) == ("0 6 * * mon-fri", "cron")
    assert parse_schedule(sched.text) == sched


def test_schedule_can_be_rebuilt_from_stored_text() -> None:
    assert Schedule("weekly:tue", "weekly").is_due(D(2025, 1, 7))
    with pytest.raises(ScheduleError):
        Schedule("weekly:xyz", "weekly")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("weekly:xyz", ["unknown day 'xyz'", "weekly:<mon..sun>"]),
        ("monthly:0", ["'0'", "1 to 28"]),
        ("monthly:29", ["'29'", "1 to 28"]),
        ("monthly:abc", ["'abc'", "1 to 28"]),
        ("monthly:²", ["1 to 28"]),
        ("* * *", ["3 fields", "needs 5", "minute hour day-of-month month day-of-week"]),
        ("61 * * * *", ["minute '61'", "out of range", "0-59"]),
        ("0 24 * * *", ["hour '24'", "0-23"]),
        ("0 6 32 * *", ["day-of-month '32'", "1-31"]),
        ("0 6 * 13 *", ["month '13'", "1-12"]),
        ("0 6 * * 8", ["day-of-week '8'", "0 or 7 = Sunday"]),
        ("0 6 * * funday", ["day-of-week 'funday'", "not understood"]),
        ("0 6 * * 5-1", ["runs backwards"]),
        ("*/0 * * * *", ["step of 0"]),
        ("0 6 30 2 *", ["never fires"]),
        ("0 6 L * *", ["day-of-month 'L'"]),
        ("", ["empty", "daily", "weekly:<mon..sun>", "monthly:<1..28>", "cron"]),
        ("every tuesday", ["unknown schedule 'every tuesday'", "weekly:<mon..sun>"]),
        ("mon tue wed thu fri", ["minute 'mon'", "0-59"]),
        (
            "hourly",
            [
                "unknown schedule 'hourly'",
                "daily, weekly:<mon..sun>, monthly:<1..28>",
                "'0 6 * * 1-5'",
            ],
        ),
    ],
)
def test_invalid_schedules_raise_useful_errors(text: str, words: list[str]) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(
    ("text", "description"),
    [
        ("daily", "every day"),
        ("weekly:mon", "every Monday"),
        ("weekly:sunday", "every Sunday"),
        ("monthly:15", "on day 15 of every month"),
        ("0 6 * * 1-5", "at 06:00 on Monday to Friday"),
        ("0 6 * * 0", "at 06:00 on Sunday"),
        ("0 6 * * 7", "at 06:00 on Sunday"),
        ("0 6 * * *", "at 06:00 every day"),
        ("0 6 1,15 * *", "at 06:00 on days 1 and 15 of the month"),
        ("30 6,18 * * sat,sun", "at 06:30 and 18:30 on Saturday and Sunday"),
        ("0 6 * * 5-7", "at 06:00 on Friday to Sunday"),
        ("0 0 13 * 5", "at 00:00 on day 13 of the month when that is a Friday"),
        ("0 6 1 1-3 *", "at 06:00 on day 1 of the month in January to March"),
        ("*/15 * * * *", "every 15 minutes every day"),
        ("5 * * * *", "at minute 5 of every hour every day"),
        ("* 9-17 * * 1-5", "every minute during hours 9 to 17 on Monday to Friday"),
    ],
)
def test_describe(text: str, description: str) -> None:
    assert parse_schedule(text).describe() == description


def test_parse_cron_gives_trigger_with_standard_day_numbers() -> None:
    trigger = parse_cron("0 6 * * 1-5")
    assert isinstance(trigger, CronTrigger)
    saturday = dt.datetime(2025, 1, 4, 12, tzinfo=dt.UTC)
    assert trigger.get_next_fire_time(None, saturday) == dt.datetime(2025, 1, 6, 6, tzinfo=dt.UTC)
    sunday = parse_cron("0 6 * * 0").get_next_fire_time(None, saturday)
    assert sunday == dt.datetime(2025, 1, 5, 6, tzinfo=dt.UTC)
    assert parse_cron("0 6 * * 7").get_next_fire_time(None, saturday) == sunday


def test_parse_cron_uses_time_zone() -> None:
    trigger = parse_cron("0 6 * * *", "Europe/Berlin")
    fire = trigger.get_next_fire_time(None, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    assert fire is not None and fire.utcoffset() == dt.timedelta(hours=1) and fire.hour == 6
    with pytest.raises(ScheduleError, match="cannot be scheduled"):
        parse_cron("0 6 * * *", "Nowhere/Atlantis")


@pytest.mark.parametrize("text", ["weekly:mon", "", "0 6 * *", "0 6 * * 9"])
def test_parse_cron_rejects_non_cron(text: str) -> None:
    with pytest.raises(ScheduleError):
        parse_cron(text)


# Random cron strings: the trigger handed to APScheduler and is_due() agree on every day.
_num = st.integers
_field_items = {
    "day": st.one_of(
        st.just("*"),
        _num(1, 28).map(str),
        st.tuples(_num(1, 15), _num(15, 31)).map(lambda t: f"{t[0]}-{t[1]}"),
        _num(2, 9).map(lambda s: f"*/{s}"),
    ),
    "month": st.one_of(
        st.just("*"), _num(1, 12).map(str), st.sampled_from(["jan-mar", "*/3", "6,7,8"])
    ),
    "dow": st.one_of(
        st.just("*"),
        _num(0, 7).map(str),
        st.sampled_from(
            [
                "1-5",
                "0-6",
                "5-7",
                "*/2",
                "1-5/2",
                "sat,sun",
                "mon-fri",
                "0,3",
                "7,1",
                "sat-sun",
                "5-0",
                "fri-sun",
            ]
        ),
    ),
}


@settings(max_examples=60, deadline=None, database=None)
@given(
    day=_field_items["day"],
    month=_field_items["month"],
    dow=_field_items["dow"],
    start=st.dates(D(2024, 1, 1), D(2026, 12, 1)),
)
def test_trigger_and_is_due_agree(day: str, month: str, dow: str, start: D) -> None:
    text = f"0 6 {day} {month} {dow}"
    sched = parse_schedule(text)
    trigger = parse_cron(text)
    end = start + dt.timedelta(days=40)
    fired: set[D] = set()
    now = dt.datetime.combine(start, dt.time(), dt.UTC)
    while (fire := trigger.get_next_fire_time(None, now)) is not None and fire.date() <= end:
        fired.add(fire.date())
        now = fire + dt.timedelta(minutes=1)
    assert set(sched.due_dates(start, end)) == fired
    # And both follow standard cron day numbering (0/7 = Sunday).
    for d in fired:
        assert (d.weekday() + 1) % 7 in _cron_days(dow)
        assert d.month in _months(month) and d.day in _expand(day, 1, 31)


def _expand(field: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for item in field.split(","):
        rng, _, step = item.partition("/")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (int(x) for x in rng.split("-"))
        else:
            a = b = int(rng)
        out.update(range(a, b + 1, int(step or 1)))
    return out


def _months(month: str) -> set[int]:
    for number, name in enumerate(calendar.month_abbr[1:], start=1):
        month = month.replace(name.lower(), str(number))
    return _expand(month, 1, 12)


def _cron_days(dow: str) -> set[int]:
    names = {"sun": "0", "mon": "1", "tue": "2", "wed": "3", "thu": "4", "fri": "5", "sat": "6"}
    for name, number in names.items():
        dow = dow.replace(name, number)
    dow = re.sub(r"-0\b", "-7", dow)  # a range ending on Sunday
    return {d % 7 for d in _expand(dow, 0, 6)}
