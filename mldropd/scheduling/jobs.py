"""The functions APScheduler calls. Persisted jobs name them by text ("mldropd.scheduling.jobs:
sweep") and pass only plain values; they act on the daemon that is running in this process."""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mldropd.daemon import Daemon

log = logging.getLogger(__name__)
_daemon: Daemon | None = None


def bind(daemon: Daemon | None) -> None:
    """Point the scheduled jobs at the running daemon (None when it stops)."""
    global _daemon
    _daemon = daemon


def _current() -> Daemon | None:
    if _daemon is None:
        log.warning("scheduled job fired while no daemon is running; ignored")
    return _daemon


def sweep() -> None:
    """The daily sweep: plan and queue every due model (and missed dates in the window)."""
    if (daemon := _current()) is not None:
        daemon.sweep()


def retry(day: str, model_ids: list[int]) -> None:
    """Try failed models of a date again."""
    if (daemon := _current()) is not None:
        daemon.retry(dt.date.fromisoformat(day), model_ids)


def deliver_outbox() -> None:
    """Send (or keep) pending report emails."""
    if (daemon := _current()) is not None:
        daemon.deliver_outbox()


def resume(batch_id: int) -> None:
    """Run a batch that was waiting for its feature slice."""
    if (daemon := _current()) is not None:
        daemon.resume(batch_id)
