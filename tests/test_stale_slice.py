"""A run scored from an older slice says so: run record, API, page, report subject and body,
and the DQ record, whose status [dq] stale_slice sets."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlmodel import select

from mldropd.app import create_app
from mldropd.auth import rotate_token
from mldropd.db import session_scope
from mldropd.records import DQResult, OutboxMessage
from tests.support import field_data
from tests.support.home import today
from tests.support.key_lab import make_lab

pytestmark = pytest.mark.slow  # a batch scored in sandboxed model hosts


def test_a_stale_slice_is_said_everywhere_and_weighed_by_dq(tmp_path: Path) -> None:
    yesterday, day = today() - dt.timedelta(days=1), today()
    field_data.write_pandas_hive(
        tmp_path / "features", [yesterday - dt.timedelta(days=1), yesterday]
    )
    lab = make_lab(tmp_path, 'path = "features"\nduplicate_keys = "first"\nnull_keys = "drop"')
    said = f"scored from the {yesterday} slice: {day} not present; max_staleness_days = 3"
    lab.run(yesterday - dt.timedelta(days=1))  # the DQ reference
    run = lab.run(day)
    assert run.status == "succeeded", run.error
    assert run.slice_date == yesterday and run.stale_slice == said
    with session_scope(lab.db) as s:
        dq = s.exec(select(DQResult).where(DQResult.model_run_id == run.id)).one()
        report = s.exec(select(OutboxMessage).order_by(OutboxMessage.id.desc())).first()  # type: ignore[union-attr]
    assert dq.status in ("warn", "alert")  # [dq] stale_slice = "warn" by default
    assert (
        dq.reason.startswith(f"Scored from the {yesterday} slice")
        and "stale_slice = warn" in dq.reason
    )
    assert report is not None
    assert f"(scored from the {yesterday} slice)" in report.subject
    assert f"Slice:      {said}" in report.body_text and said in report.body_html
    token = rotate_token(lab.db, "ann@example.com")
    client = TestClient(create_app(lab.settings))
    runs = client.get(
        "/api/v1/runs",
        params={"model_id": lab.model_id},
        headers={"Authorization": f"Bearer {token}"},
    ).json()
    assert [r["stale_slice"] for r in runs if r["id"] == run.id] == [said]
    assert "entity_id values" in runs[-1]["key_check"]["note"]

    lab.settings.dq.stale_slice = "alert"  # the operator makes staleness an alert
    again = lab.run(day)
    with session_scope(lab.db) as s:
        dq = s.exec(select(DQResult).where(DQResult.model_run_id == again.id)).one()
    assert dq.status == "alert" and "stale_slice = alert" in dq.reason
