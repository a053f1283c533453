"""The column types at the database edge: every point in time goes in and comes out aware UTC,
every status is a member of its enum in mldropd.states, and the text SQLite stores is what
mldropd always stored (so rows written before these types read back as they should, and no
migration was needed)."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from enum import StrEnum
from pathlib import Path

import pytest
from sqlalchemy import DateTime
from sqlalchemy import Enum as SAEnum
from sqlalchemy.engine import Engine
from sqlalchemy.exc import StatementError
from sqlmodel import Session, SQLModel

import mldropd
from mldropd.db import init_db, make_engine, session_scope
from mldropd.records import BatchRun, ModelRun, Moment, OutboxMessage
from mldropd.states import ModelRunStatus, OutboxStatus, Phase, RunStatus, Trigger

INDIA = dt.timezone(dt.timedelta(hours=5, minutes=30))
STATUS_COLUMNS = {"status", "trigger", "phase"}


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(tmp_path / "mldropd.db")
    init_db(engine)
    return engine


def _impl(kind: object) -> object:
    return getattr(kind, "impl", kind)


def _columns() -> list[tuple[str, str, object]]:
    return [
        (table.name, column.name, column.type)
        for table in SQLModel.metadata.sorted_tables
        for column in table.columns
    ]


def test_every_time_and_status_column_has_its_type() -> None:
    times = [(t, c, kind) for t, c, kind in _columns() if isinstance(_impl(kind), DateTime)]
    assert len(times) >= 20
    plain = [(t, c) for t, c, kind in times if not isinstance(kind, Moment)]
    assert plain == [], f"datetime columns without the Moment type: {plain}"
    statuses = [(t, c, kind) for t, c, kind in _columns() if c in STATUS_COLUMNS]
    assert len(statuses) >= 9
    for table, column, kind in statuses:
        assert isinstance(kind, SAEnum) and issubclass(kind.enum_class, StrEnum), (table, column)
        assert kind.enum_class.__module__ == "mldropd.states", (table, column)


def _batch(s: Session, **fields: object) -> BatchRun:
    batch = BatchRun(date=dt.date(2026, 3, 1), trigger=Trigger.MANUAL, **fields)
    s.add(batch)
    s.flush()
    return batch


def test_times_come_back_aware_utc_and_are_stored_as_before(engine: Engine) -> None:
    noon_in_india = dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=INDIA)
    with session_scope(engine) as s:
        batch_id = _batch(s, not_before=noon_in_india).id
    with Session(engine) as s:
        batch = s.get(BatchRun, batch_id)
        assert batch is not None and batch.not_before is not None
        assert batch.not_before == noon_in_india  # the same instant ...
        assert batch.not_before.utcoffset() == dt.timedelta(0)  # ... told in UTC
        assert batch.created_at.tzinfo is not None
        assert batch.status is RunStatus.PENDING and batch.trigger is Trigger.MANUAL
    with sqlite3.connect(str(engine.url.database)) as con:
        stored = con.execute("SELECT not_before, status FROM batch_run").fetchone()
    # SQLite keeps the UTC wall time as text, as every earlier mldropd wrote it.
    assert stored == ("2026-03-01 06:30:00.250000", "pending")


def test_rows_written_by_an_earlier_mldropd_read_back_typed(engine: Engine) -> None:
    with sqlite3.connect(str(engine.url.database)) as con:
        con.execute(
            "INSERT INTO batch_run (date, trigger, force, status, reported, created_at, phase) "
            "VALUES ('2026-03-01', 'schedule', 0, 'running', 0, '2026-03-01 06:00:00.000000', "
            "'scoring')"
        )
    with Session(engine) as s:
        batch = s.get(BatchRun, 1)
        assert batch is not None
        assert batch.created_at == dt.datetime(2026, 3, 1, 6, tzinfo=dt.UTC)
        assert (batch.status, batch.trigger, batch.phase) == (
            RunStatus.RUNNING,
            Trigger.SCHEDULE,
            Phase.SCORING,
        )
        assert isinstance(batch.phase, Phase)


def test_a_naive_time_is_refused(engine: Engine) -> None:
    with pytest.raises(StatementError, match="timezone"), session_scope(engine) as s:
        _batch(s, heartbeat_at=dt.datetime(2026, 3, 1, 12))


def test_a_status_outside_its_enum_is_refused(engine: Engine) -> None:
    with session_scope(engine) as s:
        batch_id = _batch(s).id or 0
    with pytest.raises(StatementError, match="'finished' is not among"), session_scope(engine) as s:
        s.add(
            ModelRun(
                batch_id=batch_id,
                model_id=1,
                model_version=1,
                date=dt.date(2026, 3, 1),
                trigger=Trigger.MANUAL,
                status="finished",  # type: ignore[arg-type]
            )
        )
    with pytest.raises(StatementError, match="'bounced' is not among"), session_scope(engine) as s:
        s.add(OutboxMessage(to="a@b.c", subject="s", body_text="t", status="bounced"))  # type: ignore[arg-type]
    with session_scope(engine) as s:  # the members' values are accepted as text too
        s.add(OutboxMessage(to="a@b.c", subject="s", body_text="t", status="kept"))  # type: ignore[arg-type]
    with Session(engine) as s:
        assert s.get(OutboxMessage, 1).status is OutboxStatus.KEPT  # type: ignore[union-attr]
    assert ModelRunStatus.PENDING == "pending"  # members compare equal to their text


# What the column types make unnecessary: code mending a naive datetime after reading it.
REPAIRS = re.compile(r"tzinfo is None|replace\(tzinfo=|\.tzinfo else|\baware\(")


def test_no_code_repairs_naive_datetimes() -> None:
    root = Path(mldropd.__file__).parent
    found = [
        f"{path.relative_to(root)}:{number}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if REPAIRS.search(line)
    ]
    assert found == [], "naive datetimes repaired by hand:\n" + "\n".join(found)
