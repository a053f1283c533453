"""Run lifecycle through the API with the real scheduler: retries, the late-data sensor,
backfills, bulk re-runs, the DQ publish gate and feature drift."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from mldropd import save_model
from mldropd.demo import write_features
from mldropd.settings import Settings
from tests.support.home import N_ENTITIES, N_FEATURES, today
from tests.support.wait import wait_for


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.scheduler.sensor_interval = 1
    settings.engine.validate_sample_rows = 500
    return settings


@pytest.fixture
def headers(make_user: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_user('ann@example.com')}"}


def upload(client: TestClient[Any], headers: dict[str, str], path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        response = client.post("/api/v1/models", headers=headers, files={"file": (path.name, f)})
    assert response.status_code == 201, response.text
    return response.json()


def runs_of(client: TestClient[Any], headers: dict[str, str], **params: Any) -> list[dict]:
    return client.get("/api/v1/runs", headers=headers, params=params).json()


def settled(
    client: TestClient[Any], headers: dict[str, str], count: int, **params: Any
) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = runs_of(client, headers, **params)
        final = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return sorted(runs, key=lambda r: r["id"]) if len(final) == count == len(runs) else None

    return wait_for(done, timeout=180, what=f"{count} finished runs for {params}")


def _flaky() -> Callable[[Any], Any]:
    """Fails on a slice whose last row has no f00 (an upstream table not refreshed yet); the
    dry run's sample (the slice's first rows) has it. The sandboxed model sees only its
    columns, so the data itself is what breaks and mends it."""

    def flaky(frame: Any) -> Any:
        import numpy as np

        if np.isnan(frame["f00"].to_numpy()).any():
            raise RuntimeError("upstream table not refreshed yet")
        return np.full(len(frame), 0.3)

    return flaky


def _set_last_f00(settings: Settings, value: float) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(settings.features.path) / f"dt={today().isoformat()}" / "part-0.parquet"
    table = pq.read_table(path)
    f00 = table.column("f00").to_numpy().copy()
    f00[-1] = value
    pq.write_table(table.set_column(table.schema.get_field_index("f00"), "f00", pa.array(f00)),
                   path)  # fmt: skip


def test_failed_model_is_retried_and_recovers(
    live_client: TestClient[Any], headers: dict[str, str], settings: Settings, tmp_path: Path
) -> None:
    path = save_model(tmp_path / "flaky.dill", pipeline=_flaky(), features=["f00"], name="flaky")
    _set_last_f00(settings, float("nan"))  # the upstream table is late today
    model = upload(live_client, headers, path)
    live_client.post(f"/api/v1/models/{model['id']}/runs", headers=headers, json={})
    first = settled(live_client, headers, 1, model_id=model["id"])[0]
    assert first["status"] == "failed" and "upstream table not refreshed" in first["error"]
    _set_last_f00(settings, 0.0)  # fixed before the retry fires (retry_delay = 2 s in tests)
    runs = settled(live_client, headers, 2, model_id=model["id"])
    assert [(r["attempt"], r["trigger"], r["status"]) for r in runs] == [
        (1, "manual", "failed"),
        (2, "retry", "succeeded"),
    ]
    outbox = Path(settings.email.outbox)
    files = wait_for(
        lambda: len(list(outbox.glob("*.eml"))) == 2 and sorted(outbox.glob("*.eml")),
        timeout=30,
        what="two reports",
    )
    bodies = [
        email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
        .get_body(preferencelist=("plain",))
        .get_content()
        for f in files
    ]
    assert "attempt 1 of 3" in bodies[0] and "A retry is scheduled at" in bodies[0]
    assert "after an earlier failure" in bodies[1]


def test_sensor_waits_for_late_data_then_scores(
    live_client: TestClient[Any],
    headers: dict[str, str],
    settings: Settings,
    model_files: dict[str, Path],
) -> None:
    model = upload(live_client, headers, model_files["lgbm"])
    late = today() - dt.timedelta(days=10)  # no slice that old or within the staleness window
    accepted = live_client.post(
        f"/api/v1/models/{model['id']}/runs", headers=headers, json={"date": late.isoformat()}
    )
    assert accepted.status_code == 202
    waiting = wait_for(
        lambda: [
            r
            for r in runs_of(live_client, headers, date=late.isoformat())
            if r["error"] and "waiting for data" in r["error"]
        ],
        timeout=60,
        what="the run to wait for data",
    )[0]
    assert waiting["status"] == "pending"
    assert f"dt={late.isoformat()}" in waiting["error"]
    write_features(Path(settings.features.path), [late], N_ENTITIES, N_FEATURES)  # data lands
    run = settled(live_client, headers, 1, date=late.isoformat())[0]
    assert run["status"] == "succeeded" and run["rows"] == N_ENTITIES
    assert run["slice_date"] == late.isoformat()


def test_sensor_gives_up_at_the_deadline(
    live_client: TestClient[Any],
    headers: dict[str, str],
    settings: Settings,
    model_files: dict[str, Path],
) -> None:
    settings.scheduler.sensor_deadline = 3
    live_client.app.state.daemon.runner._write_settings()  # the batch job reads the settings file
    model = upload(live_client, headers, model_files["logreg"])
    late = today() - dt.timedelta(days=20)
    live_client.post(
        f"/api/v1/models/{model['id']}/runs", headers=headers, json={"date": late.isoformat()}
    )
    run = settled(live_client, headers, 1, date=late.isoformat())[0]
    assert run["status"] == "failed"
    assert "gave up waiting for the feature slice" in run["error"]
    assert f"dt={late.isoformat()}" in run["error"]


def test_backfill_range_and_rerun_failed(
    live_client: TestClient[Any], headers: dict[str, str], model_files: dict[str, Path]
) -> None:
    a = upload(live_client, headers, model_files["lgbm"])
    b = upload(live_client, headers, model_files["logreg"])
    start = today() - dt.timedelta(days=2)
    response = live_client.post(
        "/api/v1/runs",
        headers=headers,
        json={"model_ids": [a["id"], b["id"]], "from": start.isoformat()},
    )
    assert response.status_code == 202, response.text
    assert len(response.json()["runs"]) == 6
    runs = settled(live_client, headers, 6)
    by_date = [(r["date"], r["model_id"]) for r in sorted(runs, key=lambda r: r["id"])]
    assert [d for d, _ in by_date] == sorted(d for d, _ in by_date)  # oldest date first
    assert {r["trigger"] for r in runs} == {"backfill", "manual"}
    bad = live_client.post(
        "/api/v1/runs",
        headers=headers,
        json={"model_ids": [a["id"]], "from": today().isoformat(), "to": start.isoformat()},
    )
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "to"
    nothing = live_client.post(
        "/api/v1/runs/rerun-failed", headers=headers, json={"date": today().isoformat()}
    )
    assert nothing.json() == {"runs": []}


def test_publish_gate_quarantines_then_publishes_or_discards(
    live_client: TestClient[Any],
    headers: dict[str, str],
    settings: Settings,
    model_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    import dill

    with open(model_files["logreg"], "rb") as f:
        obj = dill.load(f)
    gated = save_model(
        tmp_path / "gated.dill",
        pipeline=obj["pipeline"],
        features=obj["features"],
        name="gated",
        dq={"gate": "alert", "auc_warn": 0.0, "auc_alert": 0.0},
    )
    model = upload(live_client, headers, gated)
    days = [today() - dt.timedelta(days=2), today() - dt.timedelta(days=1), today()]
    for day in days:
        live_client.post(
            f"/api/v1/models/{model['id']}/runs", headers=headers, json={"date": day.isoformat()}
        )
        settled(live_client, headers, 1, date=day.isoformat())
    runs = {r["date"]: r for r in runs_of(live_client, headers, model_id=model["id"])}
    scores = Path(settings.scores.path)
    assert not runs[days[0].isoformat()]["quarantined"]  # first date: no reference, no alert
    for day in days[1:]:
        assert runs[day.isoformat()]["quarantined"], runs[day.isoformat()]
        assert not (scores / f"dt={day}" / f"model={model['id']}").exists()
    published = live_client.post(
        f"/api/v1/runs/{runs[days[1].isoformat()]['id']}/publish", headers=headers
    )
    assert published.status_code == 200 and not published.json()["quarantined"]
    assert (scores / f"dt={days[1]}" / f"model={model['id']}" / "part-0.parquet").exists()
    discarded = live_client.post(
        f"/api/v1/runs/{runs[days[2].isoformat()]['id']}/discard", headers=headers
    )
    assert discarded.json()["status"] == "failed"
    assert "discarded at the DQ gate" in discarded.json()["error"]
    assert not (Path(settings.dq.quarantine_path) / f"dt={days[2]}").exists() or not any(
        (Path(settings.dq.quarantine_path) / f"dt={days[2]}").iterdir()
    )
    again = live_client.post(
        f"/api/v1/runs/{runs[days[2].isoformat()]['id']}/publish", headers=headers
    )
    assert again.status_code == 409
    dq = live_client.get(f"/api/v1/models/{model['id']}/dq", headers=headers).json()
    assert dq[-1]["status"] == "alert"
    drift = dq[-1]["details"]["feature_psi"]
    assert {d["feature"] for d in drift} == set(obj["features"])  # 10 features, top 10
    assert all(d["psi"] is not None and d["noise"] > 0 for d in drift)
