"""End to end through the HTTP API with the real app, scheduler, batch job and sandbox."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from litestar.testing import TestClient

from mldropd.settings import Settings
from tests.support.e2e import expected_scores, read_scores, upload_run_scores_dq_report
from tests.support.home import today
from tests.support.http import bearer, upload, wait_run


def test_upload_run_scores_dq_report(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    """Upload, two runs, exact scores, DQ, report (tests/test_s3_e2e.py runs it on S3)."""
    upload_run_scores_dq_report(live_client, settings, make_user, model_files)


def test_rescoring_replaces_partition(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("bob@example.com")
    model = upload(live_client, token, model_files["logreg"]).json()
    day = today()
    for _ in range(2):
        live_client.post(f"/api/v1/models/{model['id']}/runs", headers=bearer(token), json={})
        wait_run(live_client, token, model["id"], day)
    files = list((Path(settings.scores.path) / f"dt={day}" / f"model={model['id']}").iterdir())
    assert len(files) == 1
    scores = read_scores(settings, day, model["id"])
    assert len(scores) == 3000 and scores["entity_id"].is_unique
    runs = live_client.get(
        "/api/v1/runs", params={"model_id": model["id"]}, headers=bearer(token)
    ).json()
    assert len(runs) == 2 and scores["run_id"].iloc[0] == max(r["id"] for r in runs)
    keys, expected = expected_scores(model_files["logreg"], settings, day)
    assert np.array_equal(scores["score"].to_numpy(), expected)


def test_users_see_only_their_models(
    live_client: TestClient[Any], make_user: Callable[..., str], model_files: dict[str, Path]
) -> None:
    ann, bob = make_user("ann@example.com"), make_user("bob@example.com")
    admin = make_user("root@example.com", admin=True)
    model = upload(live_client, ann, model_files["logreg"]).json()
    mid = model["id"]
    assert live_client.get("/api/v1/models", headers=bearer(bob)).json() == []
    for method, path, body in [
        ("GET", f"/api/v1/models/{mid}", None),
        ("PATCH", f"/api/v1/models/{mid}", {"email": "x@y.z"}),
        ("DELETE", f"/api/v1/models/{mid}", None),
        ("POST", f"/api/v1/models/{mid}/runs", {}),
        ("GET", f"/api/v1/models/{mid}/dq", None),
    ]:
        response = live_client.request(method, path, headers=bearer(bob), json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert live_client.request(method, path, json=body).status_code == 401
    assert [m["id"] for m in live_client.get("/api/v1/models", headers=bearer(admin)).json()] == [
        mid
    ]
    assert (
        live_client.get(
            "/api/v1/models", params={"owner": "bob@example.com"}, headers=bearer(admin)
        ).json()
        == []
    )
    assert live_client.get(f"/api/v1/models/{mid}", headers=bearer(admin)).status_code == 200


def test_patch_and_delete(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    token = make_user("ann@example.com")
    mid = upload(live_client, token, model_files["logreg"]).json()["id"]
    changed = live_client.patch(
        f"/api/v1/models/{mid}",
        headers=bearer(token),
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
    bad = live_client.patch(
        f"/api/v1/models/{mid}",
        headers=bearer(token),
        json={"schedule": "every tuesday", "status": "gone"},
    )
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"schedule", "status"}
    dq = live_client.patch(
        f"/api/v1/models/{mid}",
        headers=bearer(token),
        json={"dq": {"psi_alert": 0.3, "gate": "alert"}},
    )
    assert dq.status_code == 200 and dq.json()["dq"] == {"psi_alert": 0.3, "gate": "alert"}
    cleared = live_client.patch(
        f"/api/v1/models/{mid}", headers=bearer(token), json={"dq": {"gate": None}}
    )
    assert cleared.json()["dq"] == {"psi_alert": 0.3}
    wrong = live_client.patch(
        f"/api/v1/models/{mid}",
        headers=bearer(token),
        json={"dq": {"psi_warn": "high", "colour": 1, "gate": "maybe"}},
    )
    assert wrong.status_code == 422
    assert {e["field"] for e in wrong.json()["errors"]} == {"dq.psi_warn", "dq.colour", "dq.gate"}
    second = upload(live_client, token, model_files["logreg"])
    assert second.status_code == 201 and second.json()["version"] == 2
    rolled = live_client.patch(f"/api/v1/models/{mid}", headers=bearer(token), json={"version": 1})
    assert rolled.json()["version"] == 1
    artifacts = Path(settings.storage.path)
    assert any(artifacts.rglob("model.dill"))
    assert live_client.delete(f"/api/v1/models/{mid}", headers=bearer(token)).status_code == 204
    assert live_client.get(f"/api/v1/models/{mid}", headers=bearer(token)).status_code == 404
    assert not any(artifacts.rglob("model.dill"))


def test_health_and_schema(live_client: TestClient[Any]) -> None:
    assert live_client.get("/healthz").json()["status"] == "ok"
    ready = live_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert {"database", "store", "scheduler"} <= set(checks)
    assert set(checks.values()) == {"ok"}
    assert (
        "mldropd_model_runs" in live_client.get("/metrics").text
        or live_client.get("/metrics").status_code == 200
    )
    schema = live_client.get("/schema/openapi.json").json()
    assert "/api/v1/models" in schema["paths"]


def test_concurrent_uploads_of_one_name_make_two_versions(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    token = make_user("ann@example.com")
    with ThreadPoolExecutor(2) as pool:
        responses = list(
            pool.map(lambda _: upload(live_client, token, model_files["logreg"]), [1, 2])
        )
    assert sorted(r.status_code for r in responses) == [201, 201], [r.text for r in responses]
    model = live_client.get(
        f"/api/v1/models/{responses[0].json()['id']}", headers=bearer(token)
    ).json()
    assert sorted(v["version"] for v in model["versions"]) == [1, 2]
    stored = sorted(p.parent.name for p in Path(settings.storage.path).rglob("model.dill"))
    assert stored == ["v1", "v2"]
