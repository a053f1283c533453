"""The end-to-end flow through the HTTP API, shared by the local-store and S3-store tests."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import duckdb
import numpy as np
import pyarrow.parquet as pq
from litestar.testing import TestClient

from mldropd.settings import Settings
from tests.support.home import today
from tests.support.http import bearer, upload, wait_run
from tests.support.wait import wait_for


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


def upload_run_scores_dq_report(
    client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
) -> None:
    """Upload, score two dates, compare the scores with predict_proba, read DQ and the report."""
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

    listed = client.get("/api/v1/models", headers=bearer(token)).json()
    assert [m["id"] for m in listed] == [model["id"]]

    yesterday, day = today() - dt.timedelta(days=1), today()
    for run_date in (yesterday, day):
        accepted = client.post(
            f"/api/v1/models/{model['id']}/runs",
            headers=bearer(token),
            json={"date": run_date.isoformat()},
        )
        assert accepted.status_code == 202, accepted.text
        run = wait_run(client, token, model["id"], run_date)
        assert run["status"] == "succeeded", run
        assert run["rows"] == 3000 and run["attempt"] == 1
        one = client.get(f"/api/v1/runs/{accepted.json()['run_id']}", headers=bearer(token)).json()
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

    dq = client.get(f"/api/v1/models/{model['id']}/dq", headers=bearer(token)).json()
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
