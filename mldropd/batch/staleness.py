"""A slice older than the run date, said in words everywhere a run is shown, and weighed by DQ.

`[features] max_staleness_days` lets a run score the latest slice not older than that many days
when its own date has none. That is allowed, never silent: the run record, the report's subject
and body, the run page, the API and the DQ record say which slice was used, and
`[dq] stale_slice` makes it a DQ warn or alert (or only a stated fact, "ok").
"""

from __future__ import annotations

from mldropd.features import Slice

STALE_LEVELS = ("ok", "warn", "alert")
_RANK = {"ok": 0, "warn": 1, "alert": 2}


def stale_note(slice_: Slice, max_staleness_days: int) -> str | None:
    """'scored from the 2026-11-29 slice: 2026-11-30 not present; max_staleness_days = 3'."""
    if slice_.date == slice_.run_date:
        return None
    return (
        f"scored from the {slice_.date} slice: {slice_.run_date} not present; "
        f"max_staleness_days = {max_staleness_days}"
    )


def weigh(status: str, reason: str, note: str | None, level: str) -> tuple[str, str]:
    """The DQ status and reason with a stale slice taken in: at least `level`, said first."""
    if note is None:
        return status, reason
    if _RANK.get(level, 0) > _RANK.get(status, 0):
        status = level
    return status, f"{note[0].upper()}{note[1:]} ([dq] stale_slice = {level}). {reason}".strip()
