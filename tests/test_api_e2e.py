"""End to end through the HTTP API with the real app, scheduler, batch job and sandbox."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dill
import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from mldropd.app import create_app
from mldropd.settings import Settings
from tests.conftest import today, wait_for


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings), timeout=120) as c:
        yield c


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def upload(client: TestClient[Any], token: str, path: Path, **form: str) -> Any:
    with open(path, "rb") as f:
        return client.post(
            "/api/v1/models",
            headers=auth(token),
            files={"file": (path.name, f, "application/octet-stream")},
            data=form,
        )


def wait_run(client: TestClient[Any], token: str, model_id: int, day: dt.date) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        runs = client.get(
            "/api/v1/runs",
            params={"model_id": model_id, "date": day.isoformat()},
            headers=auth(token),
        ).json()
        done = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return done[0] if done and len(done) == len(runs) else None

    return wait_for(finished, timeout=180, what=f"run of model {model_id} on {day}")


def read_scores(settings: Settings, day: dt.date, model_id: int) -> Any:
    glob = Path(settings.scores.path) / f"dt={day}" / f"model={model_id}" / "*.parquet"
    return duckdb.sql(f"SELECT * FROM read_parquet('{glob}') ORDER BY entity_id").df()


def expected_scores(model_path: Path, settings: Settings, day: dt.date) -> Any:
    with open(model_path, "rb") as f:
        obj = dill.load(f)
    glob = Path(settings.features.path) / f"dt={day}" / "*.parquet"
    frame = duckdb.sql(f"SELECT * FROM read_parquet('{glob}') ORDER BY entity_id").df()
    return frame["entity_id"].to_numpy(), obj["pipeline"].predict_proba(frame[obj["features"]])[
        :, 1
    ]


def test_upload_run_scores_dq_report(
    client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("ann@example.com")
    response = upload(
        client, token, model_files["lgbm"], email="ann.reports@example.com", schedule="weekly:mon"
    )
    assert response.status_code == 201, response.text
    model = response.json()
    assert model["name"] == "churn_lgbm" and model["owner"] == "ann@example.com"
    assert model["email"] == "ann.reports@example.com" and model["schedule"] == "weekly:mon"
    assert model["status"] == "active" and model["version"] == 1
    assert len(model["features"]) == 12 and model["next_run_date"]
    assert dt.date.fromisoformat(model["next_run_date"]).weekday() == 0
    assert model["versions"][0]["dry_run"]["rows"] > 0

    listed = client.get("/api/v1/models", headers=auth(token)).json()
    assert [m["id"] for m in listed] == [model["id"]]

    yesterday, day = today() - dt.timedelta(days=1), today()
    for run_date in (yesterday, day):
        accepted = client.post(
            f"/api/v1/models/{model['id']}/runs",
            headers=auth(token),
            json={"date": run_date.isoformat()},
        )
        assert accepted.status_code == 202, accepted.text
        run = wait_run(client, token, model["id"], run_date)
        assert run["status"] == "succeeded", run
        assert run["rows"] == 3000 and run["attempt"] == 1
        one = client.get(f"/api/v1/runs/{accepted.json()['run_id']}", headers=auth(token)).json()
        assert one["status"] == "succeeded"

    # Scores equal the model's own predict_proba on that day's features, one row per entity.
    scores = read_scores(settings, day, model["id"])
    keys, expected = expected_scores(model_files["lgbm"], settings, day)
    part = Path(settings.scores.path) / f"dt={day}" / f"model={model['id']}"
    assert [p.name for p in part.iterdir()] == ["part-0.parquet"]
    assert pq.read_schema(part / "part-0.parquet").names == [
        "entity_id",
        "score",
        "model_id",
        "model_version",
        "run_id",
        "scored_at",
    ]
    # Hive-style reading adds the partition columns.
    assert {"dt", "model"} <= set(scores.columns)
    assert np.array_equal(scores["entity_id"].to_numpy(), keys)
    assert np.array_equal(scores["score"].to_numpy(), expected)
    assert set(scores["model_id"]) == {model["id"]} and set(scores["model_version"]) == {1}

    dq = client.get(f"/api/v1/models/{model['id']}/dq", headers=auth(token)).json()
    assert [d["date"] for d in dq] == [yesterday.isoformat(), day.isoformat()]
    assert dq[0]["reference_date"] is None and "first scored date" in dq[0]["reason"]
    second = dq[1]
    assert second["reference_date"] == yesterday.isoformat()
    assert second["psi"] is not None and second["psi_noise"] is not None
    assert 0.0 <= second["auc"] <= 1.0 and second["ks"] is not None
    assert second["status"] in ("ok", "warn", "alert") and second["reason"]

    # The owner's report is in the outbox folder as an .eml file.
    outbox = Path(settings.email.outbox)
    files = wait_for(
        lambda: len(list(outbox.glob("*.eml"))) == 2 and sorted(outbox.glob("*.eml")),
        timeout=30,
        what="two report emails in the outbox",
    )
    messages = [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files
    ]
    last = messages[-1]
    assert last["To"] == "ann.reports@example.com" and "churn_lgbm" in last["Subject"]
    body = last.get_body(preferencelist=("plain",)).get_content()
    assert "3,000" in body and "PSI" in body and day.isoformat() in body


def test_rescoring_replaces_partition(
    client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("bob@example.com")
    model = upload(client, token, model_files["logreg"]).json()
    day = today()
    for _ in range(2):
        client.post(f"/api/v1/models/{model['id']}/runs", headers=auth(token), json={})
        wait_run(client, token, model["id"], day)
    files = list((Path(settings.scores.path) / f"dt={day}" / f"model={model['id']}").iterdir())
    assert len(files) == 1
    scores = read_scores(settings, day, model["id"])
    assert len(scores) == 3000 and scores["entity_id"].is_unique
    runs = client.get("/api/v1/runs", params={"model_id": model["id"]}, headers=auth(token)).json()
    assert len(runs) == 2 and scores["run_id"].iloc[0] == max(r["id"] for r in runs)
    keys, expected = expected_scores(model_files["logreg"], settings, day)
    assert np.array_equal(scores["score"].to_numpy(), expected)


def test_users_see_only_their_models(
    client: TestClient[Any], make_user: Callable[..., str], model_files: dict[str, Path]
) -> None:
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    admin = make_user("root@example.com", admin=True)
    model = upload(client, ann, model_files["logreg"]).json()
    mid = model["id"]
    assert client.get("/api/v1/models", headers=auth(bob)).json() == []
    for method, path, body in [
        ("GET", f"/api/v1/models/{mid}", None),
        ("PATCH", f"/api/v1/models/{mid}", {"email": "x@y.z"}),
        ("DELETE", f"/api/v1/models/{mid}", None),
        ("POST", f"/api/v1/models/{mid}/runs", {}),
        ("GET", f"/api/v1/models/{mid}/dq", None),
    ]:
        response = client.request(method, path, headers=auth(bob), json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert client.request(method, path, json=body).status_code == 401
    assert [m["id"] for m in client.get("/api/v1/models", headers=auth(admin)).json()] == [mid]
    assert (
        client.get(
            "/api/v1/models", params={"owner": "bob@example.com"}, headers=auth(admin)
        ).json()
        == []
    )
    assert client.get(f"/api/v1/models/{mid}", headers=auth(admin)).status_code == 200


def test_patch_and_delete(
    client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("ann@example.com")
    mid = upload(client, token, model_files["logreg"]).json()["id"]
    changed = client.patch(
        f"/api/v1/models/{mid}",
        headers=auth(token),
        json={"schedule": "monthly:3", "email": "new@example.com", "status": "paused"},
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["schedule"], body["email"], body["status"]) == (
        "monthly:3",
        "new@example.com",
        "paused",
    )
    assert body["next_run_date"] is None
    bad = client.patch(
        f"/api/v1/models/{mid}",
        headers=auth(token),
        json={"schedule": "every tuesday", "status": "gone"},
    )
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"schedule", "status"}
    dq = client.patch(
        f"/api/v1/models/{mid}",
        headers=auth(token),
        json={"dq": {"psi_alert": 0.3, "gate": "alert"}},
    )
    assert dq.status_code == 200 and dq.json()["dq"] == {"psi_alert": 0.3, "gate": "alert"}
    cleared = client.patch(
        f"/api/v1/models/{mid}", headers=auth(token), json={"dq": {"gate": None}}
    )
    assert cleared.json()["dq"] == {"psi_alert": 0.3}
    wrong = client.patch(
        f"/api/v1/models/{mid}",
        headers=auth(token),
        json={"dq": {"psi_warn": "high", "colour": 1, "gate": "maybe"}},
    )
    assert wrong.status_code == 422
    assert {e["field"] for e in wrong.json()["errors"]} == {"dq.psi_warn", "dq.colour", "dq.gate"}
    second = upload(client, token, model_files["logreg"])
    assert second.status_code == 201 and second.json()["version"] == 2
    rolled = client.patch(f"/api/v1/models/{mid}", headers=auth(token), json={"version": 1})
    assert rolled.json()["version"] == 1
    artifacts = Path(settings.storage.path)
    assert any(artifacts.rglob("model.dill"))
    assert client.delete(f"/api/v1/models/{mid}", headers=auth(token)).status_code == 204
    assert client.get(f"/api/v1/models/{mid}", headers=auth(token)).status_code == 404
    assert not any(artifacts.rglob("model.dill"))


def test_health_and_schema(client: TestClient[Any]) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert {"database", "store", "scheduler"} <= set(checks)
    assert set(checks.values()) == {"ok"}
    assert (
        "mldropd_model_runs" in client.get("/metrics").text
        or client.get("/metrics").status_code == 200
    )
    schema = client.get("/schema/openapi.json").json()
    assert "/api/v1/models" in schema["paths"]


def test_concurrent_uploads_of_one_name_make_two_versions(
    client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    token = make_user("ann@example.com")
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: upload(client, token, model_files["logreg"]), [1, 2]))
    assert sorted(r.status_code for r in responses) == [201, 201], [r.text for r in responses]
    model = client.get(f"/api/v1/models/{responses[0].json()['id']}", headers=auth(token)).json()
    assert sorted(v["version"] for v in model["versions"]) == [1, 2]
    stored = sorted(p.parent.name for p in Path(settings.storage.path).rglob("model.dill"))
    assert stored == ["v1", "v2"]
