"""The service layer: every action of the API, the pages and the CLI, with its rules, once.

A handler (mldropd/api, mldropd/pages, mldropd/cli*.py) parses its input, calls one service
method and renders what comes back; it never opens a database session. A service method opens
the session, finds the caller's objects through services.access (the only ownership check),
applies the action's rules (services.runs: no future dates, at most 367 days) and writes the
audit row in the transaction of the change it describes.

    models  ModelService  lists, details, changes, deletes, DQ history; the pages' reads
    runs    RunService    run requests, backfills, re-runs of failures, runs, the DQ gate
    users   UserService   who is asking; admins' quotas, outbox and audit log

Requests and answers are typed in services.schemas (the OpenAPI document is made from them);
services.views builds the answers from the records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from sqlalchemy.engine import Engine

from mldropd.services.access import CommandLine, cli
from mldropd.services.models import ModelService
from mldropd.services.runs import RunService
from mldropd.services.users import UserService
from mldropd.settings import Settings
from mldropd.store.base import ArtifactStore

if TYPE_CHECKING:
    from mldropd.daemon import Daemon

__all__ = ["CommandLine", "ModelService", "RunService", "Services", "UserService", "cli"]


@dataclass(frozen=True)
class Services:
    models: ModelService
    runs: RunService
    users: UserService

    @classmethod
    def of(cls, daemon: Daemon) -> Services:
        """The daemon's services: its clock; run requests are queued on its runner."""
        return cls.build(
            daemon.engine,
            daemon.settings,
            store=daemon.store,
            submit=daemon.runner.submit,
            now=daemon.now,
        )

    @classmethod
    def build(
        cls,
        engine: Engine,
        settings: Settings,
        *,
        store: ArtifactStore | None = None,
        submit: Callable[[int], None] | None = None,
        now: Callable[[], dt.datetime] | None = None,
    ) -> Services:
        """Services on a database: a command runs its batches itself (submit None) and deletes
        no model without a store. now: the clock (default: the scheduler's time zone's, as
        Daemon.now)."""
        zone = ZoneInfo(settings.scheduler.timezone)
        clock = now or (lambda: dt.datetime.now(zone))
        return cls(
            ModelService(engine, settings, store, clock),
            RunService(engine, settings, lambda: clock().date(), submit),
            UserService(engine, settings),
        )
