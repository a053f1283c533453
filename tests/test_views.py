"""The list views (one summary query for many models) against the per-model view they replace,
on a registry with the awkward cases: re-scored dates, runs recorded out of date order, switched
versions, paused and never-run models, several owners."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import pytest
from sqlmodel import Session, select

from mldropd.db import init_db, make_engine, session_scope
from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion, User
from mldropd.services.access import visible
from mldropd.services.views import model_json, model_list, psi_histories
from mldropd.settings import Settings

NOW = dt.datetime(2026, 3, 10, 12, tzinfo=dt.UTC)
DAY = dt.date(2026, 3, 1)


def _version(model: Model, number: int, features: list[str]) -> ModelVersion:
    return ModelVersion(
        model_id=model.id or 0,
        version=number,
        artifact_key=f"k{number}",
        sha256="0" * 64,
        size=1,
        features=features,
        contract={"dq": {"psi_warn": 0.2}},
        dry_run={"rows": number},
        uploaded_by=model.email,
    )


def _run(
    s: Session, model: Model, day: dt.date, status: str, psi: float | None, **progress: Any
) -> None:
    batch = BatchRun(date=day, trigger="schedule", status="succeeded")
    s.add(batch)
    s.flush()
    run = ModelRun(
        batch_id=batch.id or 0,
        model_id=model.id or 0,
        model_version=model.version,
        date=day,
        trigger="schedule",
        status=status,
        rows=10,
        seconds=0.5,
        **progress,
    )
    s.add(run)
    s.flush()
    if psi is not None:
        s.add(
            DQResult(
                model_run_id=run.id or 0,
                model_id=model.id or 0,
                date=day,
                psi=psi,
                status="ok",
                details={"thresholds": {"psi_warn": 0.3}},
            )
        )


@pytest.fixture
def engine(settings: Settings):  # type: ignore[no-untyped-def]
    engine = make_engine(settings.database.path)
    init_db(engine)
    with session_scope(engine) as s:
        ann, bob = (
            User(email="ann@example.com", token_hash="a"),
            User(email="bob@example.com", token_hash="b"),
        )
        admin = User(email="root@example.com", token_hash="r", is_admin=True)
        s.add_all([ann, bob, admin])
        s.flush()
        models = {
            name: Model(
                owner_id=owner.id or 0,
                name=name,
                email=owner.email,
                status=status,
                schedule=schedule,
                version=version,
            )
            for name, owner, status, schedule, version in [
                ("churn", ann, "active", "daily", 2),
                ("fraud", ann, "paused", "weekly:mon", 1),
                ("upsell", bob, "active", "monthly:15", 1),
                ("fresh", bob, "active", "daily", 1),
            ]
        }
        s.add_all(models.values())
        s.flush()
        for m in models.values():
            s.add(_version(m, 1, ["a", "b"]))
            if m.version == 2:
                s.add(_version(m, 2, ["a", "b", "c"]))
        churn, fraud, upsell = models["churn"], models["fraud"], models["upsell"]
        _run(s, churn, DAY, "succeeded", 0.05)
        _run(s, churn, DAY + dt.timedelta(days=1), "succeeded", 0.06)
        _run(s, churn, DAY + dt.timedelta(days=1), "succeeded", 0.07)  # re-scored: newest wins
        _run(s, fraud, DAY + dt.timedelta(days=5), "succeeded", 0.01)
        _run(s, fraud, DAY + dt.timedelta(days=2), "succeeded", 0.02)  # recorded later, older
        _run(s, upsell, DAY, "failed", None)  # a run, no DQ
        # A backfill of fresh: its first date being scored, its second waiting its turn.
        scoring = {"phase": "scoring", "rows_done": 400, "rows_total": 1000, "rows_per_s": 200.0}
        backfill = {"eta_s": 3.0, "dates_done": 0, "dates_total": 2}
        fresh = models["fresh"]
        _run(s, fresh, DAY + dt.timedelta(days=1), "running", None, **scoring, **backfill)
        _run(s, fresh, DAY + dt.timedelta(days=2), "pending", None, phase="scoring")
    yield engine
    engine.dispose()


def _user(s: Session, email: str) -> User:
    return s.exec(select(User).where(User.email == email)).one()


@pytest.mark.parametrize("email", ["ann@example.com", "bob@example.com", "root@example.com"])
def test_list_matches_the_per_model_view(engine, settings: Settings, email: str) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        user = _user(s, email)
        models = s.exec(visible(select(Model).order_by(Model.name), user))
        expected = [model_json(s, m, settings, NOW) for m in models]
        got = model_list(s, user, settings, NOW)
        assert got == expected
        assert model_list(s, user, settings, NOW) == expected  # cached
    by_name = {m["name"]: m for m in expected}
    if email == "ann@example.com":
        churn, fraud = by_name["churn"], by_name["fraud"]
        assert churn["last_run"]["status"] == "succeeded" and churn["features"] == ["a", "b", "c"]
        assert churn["last_dq"]["psi"] == 0.07 and churn["dq"] == {"psi_warn": 0.2}
        assert fraud["last_dq"]["psi"] == 0.01 and fraud["next_run_date"] is None
        assert churn["active_run"] is None
    if email == "bob@example.com":
        fresh = by_name["fresh"]
        active, last = fresh["active_run"], fresh["last_run"]
        assert (active["date"], active["status"], active["phase"]) == (
            "2026-03-02",
            "running",
            "scoring",
        )
        assert (active["rows_done"], active["rows_total"], active["eta_s"]) == (400, 1000, 3.0)
        assert (active["dates_done"], active["dates_total"]) == (0, 2)
        # The newest date waits its turn: a phase left from an earlier attempt says nothing.
        assert (last["date"], last["status"], last["phase"]) == ("2026-03-03", "pending", None)


def test_switching_versions_shows_the_new_current_version(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        ann = _user(s, "ann@example.com")
        before = {m["name"]: m for m in model_list(s, ann, settings, NOW)}
        assert before["churn"]["features"] == ["a", "b", "c"]
    with session_scope(engine) as s:
        churn = s.exec(select(Model).where(Model.name == "churn")).one()
        churn.version = 1
        s.add(churn)
    with Session(engine) as s:
        after = {m["name"]: m for m in model_list(s, ann, settings, NOW)}
    assert after["churn"]["features"] == ["a", "b"] and after["churn"]["dry_run"] == {"rows": 1}


def test_a_page_of_rows_and_the_psi_lines(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        admin = _user(s, "root@example.com")
        names = [r["name"] for r in model_list(s, admin, settings, NOW)]
        assert names == ["churn", "fraud", "fresh", "upsell"]
        page = model_list(s, admin, settings, NOW, limit=2, offset=2)
        assert [r["name"] for r in page] == names[2:]
        bobs = model_list(s, admin, settings, NOW, owner="Bob@example.com")
        assert [r["name"] for r in bobs] == ["fresh", "upsell"]
        assert {r["owner"] for r in bobs} == {"bob@example.com"}
        ids = {r["name"]: r["id"] for r in model_list(s, admin, settings, NOW)}
        lines = psi_histories(s, list(ids.values()), points=30)
    assert lines[ids["churn"]] == ([0.05, 0.07], 0.3)  # the re-scored date once, its newest PSI
    assert lines[ids["fraud"]] == ([0.02, 0.01], 0.3)  # by date, not by the order recorded
    assert lines[ids["upsell"]] == ([], None) and lines[ids["fresh"]] == ([], None)
    with Session(engine) as s:
        assert psi_histories(s, [ids["churn"]], points=1)[ids["churn"]] == ([0.07], 0.3)


def test_a_list_is_reused_only_while_the_database_is_unchanged(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    def churn(now: dt.datetime = NOW) -> dict[str, Any]:
        with Session(engine) as s:
            rows = model_list(s, _user(s, "ann@example.com"), settings, now)
        return next(r for r in rows if r["name"] == "churn")

    first = churn()
    first["last_run"] = "changed by a caller"  # a caller's change stays with the caller
    assert churn()["last_run"]["status"] == "succeeded"
    # Another process (the batch job) commits through its own connection: seen at once.
    with sqlite3.connect(settings.database.path) as other:
        other.execute("UPDATE model_run SET status = 'running' WHERE model_id = ?", (first["id"],))
    assert churn()["last_run"]["status"] == "running"
    # next_run_date follows the clock, not only the data.
    later = churn(NOW + dt.timedelta(days=3))["next_run_date"]
    assert later is not None and later > churn()["next_run_date"]


def test_a_session_with_its_own_writes_reads_the_list_itself(engine, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        ann = _user(s, "ann@example.com")
        before = model_list(s, ann, settings, NOW)
    with Session(engine) as s:
        model = s.exec(select(Model).where(Model.name == "fraud")).one()
        model.status = "active"
        s.add(model)
        s.flush()  # not committed: neither served from nor stored in the cache
        assert {r["name"]: r["status"] for r in model_list(s, ann, settings, NOW)}["fraud"] == (
            "active"
        )
        s.rollback()
    with Session(engine) as s:
        assert model_list(s, ann, settings, NOW) == before
