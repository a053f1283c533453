"""The daemon's Spark batch driver (mldropd.batch.driver): a sweep's retries reuse the Spark
session of its first batch, and a driver killed at any moment leaves each model and date scored
exactly once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from litestar.testing import TestClient

from mldropd import save_model
from mldropd.batch.write import partition_dir
from mldropd.settings import Settings
from tests.support.home import N_ENTITIES, today
from tests.support.wait import wait_for
from tests.test_lifecycle import _flaky, _set_last_f00, runs_of, upload

pytestmark = pytest.mark.spark


def settled(
    client: TestClient[Any], headers: dict[str, str], count: int, model_id: int
) -> list[Any]:
    """The model's runs once `count` of them have ended (Spark starts slowly on a busy machine:
    each session start took 20-170 s here)."""

    def done() -> list[Any] | None:
        runs = runs_of(client, headers, model_id=model_id)
        final = [r for r in runs if r["status"] in ("succeeded", "failed")]
        return sorted(runs, key=lambda r: r["id"]) if len(final) == count == len(runs) else None

    return wait_for(done, timeout=600, what=f"{count} finished runs")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.engine.default = "spark"
    settings.engine.spark_master = "local[2]"
    settings.engine.spark_conf = {"spark.ui.enabled": "false"}
    settings.engine.validate_sample_rows = 500
    settings.engine.validate_timeout_s = 300  # the upload's dry run, on a machine Spark loads
    return settings


@pytest.fixture
def headers(make_user: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_user('ann@example.com')}"}


def test_retries_reuse_the_session_and_a_killed_driver_scores_once(
    settings: Settings,
    headers: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mldropd.app import create_app

    caplog.set_level(logging.INFO, logger="mldropd.batch.driver")

    # The driver kills itself once, after attempt 2 has published the scores and before it
    # records the run: the worst moment for "exactly once".
    monkeypatch.setenv("MLDROPD_FAULT", f"published:{tmp_path / 'killed'}")
    path = save_model(tmp_path / "flaky.dill", pipeline=_flaky(), features=["f00"], name="flaky")
    _set_last_f00(settings, float("nan"))  # the upstream table is late today
    with TestClient(create_app(settings), timeout=120) as client:
        model = upload(client, headers, path)
        client.post(f"/api/v1/models/{model['id']}/runs", headers=headers, json={})
        first = settled(client, headers, 1, model_id=model["id"])[0]
        assert first["status"] == "failed" and "upstream table not refreshed" in first["error"]
        _set_last_f00(settings, 0.0)  # mended before the retry fires (retry_delay = 2 s)
        runs = settled(client, headers, 3, model_id=model["id"])
    log = capfd.readouterr().err  # the batch jobs' log, relayed by the daemon
    drivers = [r for r in caplog.records if "spark batch driver started" in r.getMessage()]
    assert [(r["attempt"], r["trigger"], r["status"]) for r in runs] == [
        (1, "manual", "failed"),
        (2, "retry", "failed"),
        (3, "retry", "succeeded"),
    ]
    assert "the batch job died (it was killed by SIGKILL)" in runs[1]["error"]
    assert (tmp_path / "killed").exists()
    # Three Spark batches, two sessions: attempt 2 ran on attempt 1's driver and session;
    # attempt 3 needed a new driver, since attempt 2's was killed.
    assert len(drivers) == 2
    assert log.count("spark session started") == 2, log[-3000:]
    scores = pq.read_table(partition_dir(settings.scores.path, today(), model["id"]))
    assert scores.num_rows == N_ENTITIES
    assert len(set(scores.column("entity_id").to_pylist())) == N_ENTITIES
    assert set(scores.column("run_id").to_pylist()) == {runs[2]["id"]}
