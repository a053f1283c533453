"""Per-user quotas set by an admin (API and CLI), versions kept, and `mldropd store check`,
with the local-folder store (tests/test_s3_e2e.py repeats the store check on S3)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from mldropd.registry import prune_versions
from mldropd.settings import Settings
from mldropd.states import Trigger
from mldropd.store.base import model_prefix
from tests.support.cli import mldropd
from tests.support.http import bearer, upload

ANN = "ann@example.com"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.limits.versions_kept = 2
    return settings


def _message(response: Any) -> str:
    return " ".join(e["message"] for e in response.json()["errors"])


def test_admin_sets_quota_and_pausing_or_deleting_frees_a_slot(
    live_client: TestClient[Any], make_user: Callable[..., str], small_model: Path
) -> None:
    ann, admin = make_user(ANN), make_user("root@example.com", admin=True)
    users = f"/api/v1/users/{ANN}"
    assert live_client.patch(users, headers=bearer(ann), json={"quota": 5}).status_code == 404
    assert live_client.patch(users, json={"quota": 5}).status_code == 401
    for body, field in [
        ({"quota": -1}, "quota"),
        ({"quota": "many"}, "quota"),
        ({"quota": True}, "quota"),
        ({"role": "admin"}, "role"),
        ({}, "quota"),
    ]:
        bad = live_client.patch(users, headers=bearer(admin), json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["errors"][0]["field"] == field
    missing = live_client.patch(
        "/api/v1/users/nobody@example.com", headers=bearer(admin), json={"quota": 1}
    )
    assert missing.status_code == 404 and "no user nobody@example.com" in _message(missing)

    set_one = live_client.patch(users, headers=bearer(admin), json={"quota": 1})
    assert set_one.status_code == 200, set_one.text
    assert set_one.json() == {
        "email": ANN,
        "is_admin": False,
        "disabled": False,
        "quota": 1,
        "quota_source": "user",
        "active_models": [],
    }

    first = upload(live_client, ann, small_model, name="alpha")
    assert first.status_code == 201, first.text
    alpha = first.json()["id"]
    full = upload(live_client, ann, small_model, name="beta")
    assert full.status_code == 409
    assert "your quota is 1" in _message(full) and "(alpha)" in _message(full)
    again = upload(live_client, ann, small_model, name="alpha")  # a new version takes no new slot
    assert again.status_code == 201 and again.json()["version"] == 2

    paused = live_client.patch(
        f"/api/v1/models/{alpha}", headers=bearer(ann), json={"status": "paused"}
    )
    assert paused.status_code == 200
    second = upload(live_client, ann, small_model, name="beta")
    assert second.status_code == 201, second.text
    beta = second.json()["id"]
    refused = live_client.patch(
        f"/api/v1/models/{alpha}", headers=bearer(ann), json={"status": "active"}
    )
    assert refused.status_code == 409 and "(beta)" in _message(refused)

    assert live_client.delete(f"/api/v1/models/{beta}", headers=bearer(ann)).status_code == 204
    back = live_client.patch(
        f"/api/v1/models/{alpha}", headers=bearer(ann), json={"status": "active"}
    )
    assert back.status_code == 200 and back.json()["status"] == "active"

    reset = live_client.patch(users, headers=bearer(admin), json={"quota": None})
    assert reset.json()["quota"] == 20 and reset.json()["quota_source"] == "default"
    assert reset.json()["active_models"] == ["alpha"]


@pytest.mark.slow  # the CLI in real processes
def test_set_quota_cli(home: Path, make_user: Callable[..., str], settings: Settings) -> None:
    make_user(ANN)
    done = mldropd(home, "users", "set-quota", "Ann@Example.com", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{ANN}: quota 3 active model(s) (set for the user); 0 active"
    reset = mldropd(home, "users", "set-quota", ANN, "default")
    assert reset.returncode == 0, reset.stderr
    assert "quota 20 active model(s) (the default of [limits])" in reset.stdout
    nobody = mldropd(home, "users", "set-quota", "nobody@example.com", "2")
    assert nobody.returncode == 1 and "no user nobody@example.com" in nobody.stderr
    wrong = mldropd(home, "users", "set-quota", ANN, "lots")
    assert wrong.returncode == 2 and "'lots' is not a whole number" in wrong.stderr


def _folder(settings: Settings, model_id: int) -> Path:
    from sqlmodel import Session

    from mldropd.db import make_engine
    from mldropd.records import Model

    engine = make_engine(settings.database.path)
    with Session(engine) as s:
        model = s.get(Model, model_id)
        assert model is not None
        owner_id = model.owner_id
    engine.dispose()
    return Path(settings.storage.path) / model_prefix(owner_id, model_id)


def _version_folders(settings: Settings, model_id: int) -> list[str]:
    folder = _folder(settings, model_id)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _versions(client: TestClient[Any], token: str, model_id: int) -> list[int]:
    detail = client.get(f"/api/v1/models/{model_id}", headers=bearer(token)).json()
    return [v["version"] for v in detail["versions"]]


def test_versions_kept_never_the_scored_or_a_busy_one(
    live_client: TestClient[Any],
    make_user: Callable[..., str],
    small_model: Path,
    settings: Settings,
) -> None:
    ann = make_user(ANN)
    for _ in range(3):
        response = upload(live_client, ann, small_model, name="churn")
        assert response.status_code == 201, response.text
    mid = response.json()["id"]
    assert _versions(live_client, ann, mid) == [3, 2]  # versions_kept = 2: v1 went
    assert _version_folders(settings, mid) == ["v2", "v3"]

    # Roll back to v2, then keep one version: v3 is the newest, v2 is being scored.
    rolled = live_client.patch(f"/api/v1/models/{mid}", headers=bearer(ann), json={"version": 2})
    assert rolled.status_code == 200 and rolled.json()["version"] == 2
    daemon = live_client.app.state.daemon
    settings.limits.versions_kept = 1  # the daemon's own settings object
    assert prune_versions(daemon.engine, daemon.store, settings, mid) == []
    assert _versions(live_client, ann, mid) == [3, 2]

    # A run of v2 is planned but not started; a new upload makes v4 the scored version.
    _, covered = daemon.run_models(
        daemon.today(), [_model(daemon, mid)], Trigger.MANUAL, submit=False
    )
    assert covered[mid].model_version == 2
    # An object that a failed delete left behind (v1) goes at the next pruning too.
    stray = _folder(settings, mid) / "v1" / "model.dill"
    stray.parent.mkdir()
    stray.write_bytes(b"left over")
    newest = upload(live_client, ann, small_model, name="churn")
    assert newest.status_code == 201 and newest.json()["version"] == 4
    assert _versions(live_client, ann, mid) == [4, 2]  # v3 went; v2 stays for the planned run
    assert _version_folders(settings, mid) == ["v2", "v4"]
    gone = live_client.patch(f"/api/v1/models/{mid}", headers=bearer(ann), json={"version": 3})
    assert gone.status_code == 422 and "has no version 3" in _message(gone)

    # Once the planned run is over, v2 is neither scored nor busy: the next pruning removes it.
    _finish_runs(daemon, mid)
    assert prune_versions(daemon.engine, daemon.store, settings, mid) == [2]
    assert _versions(live_client, ann, mid) == [4]
    assert _version_folders(settings, mid) == ["v4"]


def _finish_runs(daemon: Any, model_id: int) -> None:
    from sqlmodel import select

    from mldropd.db import session_scope
    from mldropd.records import ModelRun

    with session_scope(daemon.engine) as s:
        for run in s.exec(select(ModelRun).where(ModelRun.model_id == model_id)):
            run.status, run.error = "failed", "cancelled by the test"


def _model(daemon: Any, model_id: int) -> Any:
    from sqlmodel import Session

    from mldropd.records import Model

    with Session(daemon.engine) as s:
        return s.get(Model, model_id)


def test_store_check_finds_missing_corrupt_and_orphans(
    live_client: TestClient[Any],
    make_user: Callable[..., str],
    small_model: Path,
    settings: Settings,
    home: Path,
) -> None:
    ann = make_user(ANN)
    for name in ("alpha", "beta", "gamma"):
        assert upload(live_client, ann, small_model, name=name).status_code == 201
    # Folders are named by ids (users/<user id>/models/<model id>), never by the e-mail.
    A, B, G, GHOST = (f"users/1/models/{i}" for i in (1, 2, 3, 99))
    clean = mldropd(home, "store", "check", "-v")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"store: folder {settings.storage.path}" in clean.stdout
    assert f"ok       {A}/v1/model.dill (model 1 alpha v1," in clean.stdout
    assert "3 artifact(s) checked: 3 ok, 0 with problems; 0 orphan object(s)" in clean.stdout
    assert "OK: every artifact" in clean.stdout

    root = Path(settings.storage.path)
    alpha = root / A / "v1" / "model.dill"
    alpha.write_bytes(bytes(b ^ 0xFF for b in alpha.read_bytes()))  # same size, other bytes
    (root / B / "v1" / "model.dill").unlink()
    (root / G / "v1" / "manifest.json").unlink()
    (root / GHOST / "v7").mkdir(parents=True)
    (root / GHOST / "v7" / "model.dill").write_bytes(b"nobody's")

    found = mldropd(home, "store", "check")
    assert found.returncode == 1, found.stdout + found.stderr
    lines = found.stdout.splitlines()
    assert any(
        line.startswith(f"BAD      {A}/v1/model.dill (model 1 alpha v1): sha256 ")
        and "in the database" in line
        for line in lines
    ), found.stdout
    assert f"MISSING  {B}/v1/model.dill (model 2 beta v1): the object is missing" in found.stdout
    assert (
        f"BAD      {G}/v1/model.dill (model 3 gamma v1): its manifest "
        f"{G}/v1/manifest.json is missing" in found.stdout
    )
    assert f"ORPHAN   {GHOST}/v7/model.dill (no database row points at it)" in found.stdout
    assert "3 artifact(s) checked: 0 ok, 3 with problems; 1 orphan object(s)" in found.stdout
    assert "ok       " not in found.stdout  # without -v only problems are listed
