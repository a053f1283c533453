"""SIGKILL the batch job at each point of a batch: the model still ends up scored exactly once,
with one complete partition, and nothing is left running."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
from litestar.testing import TestClient

from mldropd.settings import Settings
from tests.support.home import N_ENTITIES, today
from tests.support.wait import wait_for


def _partition_rows(settings: Settings, model_id: int) -> tuple[list[str], tuple[int, int]]:
    part = Path(settings.scores.path) / f"dt={today()}" / f"model={model_id}"
    files = sorted(p.name for p in part.iterdir())
    counts = duckdb.sql(
        f"SELECT count(*), count(DISTINCT entity_id) FROM read_parquet('{part}/*.parquet')"
    ).fetchall()[0]
    return files, counts


@pytest.mark.parametrize("point", ["claimed", "swapping", "checked"])
def test_batch_job_killed_at_each_point(
    point: str,
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = {"Authorization": f"Bearer {make_user('ann@example.com')}"}
    with open(model_files["logreg"], "rb") as f:
        model = live_client.post(
            "/api/v1/models", headers=headers, files={"file": ("m.dill", f)}
        ).json()

    def runs() -> list[dict[str, Any]]:
        return sorted(
            live_client.get(
                "/api/v1/runs", headers=headers, params={"model_id": model["id"]}
            ).json(),
            key=lambda r: r["id"],
        )

    def settled(count: int) -> list[dict[str, Any]]:
        return wait_for(
            lambda: (
                (r := runs())
                and len(r) == count
                and all(x["status"] in ("succeeded", "failed") for x in r)
                and r
            ),
            timeout=180,
            what=f"{count} settled runs",
        )

    live_client.post(f"/api/v1/models/{model['id']}/runs", headers=headers, json={})
    settled(1)  # a first, clean partition for the date
    monkeypatch.setenv("MLDROPD_FAULT", f"{point}:{tmp_path / 'fired'}")
    live_client.post(f"/api/v1/models/{model['id']}/runs", headers=headers, json={})
    if point == "checked":  # killed after every model had succeeded: nothing to retry
        history = settled(2)
        assert [r["status"] for r in history] == ["succeeded", "succeeded"]
    else:
        history = settled(3)
        assert [(r["status"], r["trigger"]) for r in history] == [
            ("succeeded", "manual"),
            ("failed", "manual"),
            ("succeeded", "retry"),
        ], history
        assert "the batch job died" in history[1]["error"]
    # At "checked" the model run is already marked succeeded a moment before the kill: wait.
    wait_for(lambda: (tmp_path / "fired").exists(), timeout=30, what="the fault point")
    outbox = Path(settings.email.outbox)  # every batch's owner report went out, once
    wait_for(
        lambda: len(list(outbox.glob("*.eml"))) == len(history),
        timeout=60,
        what="one report per batch",
    )
    files, counts = _partition_rows(settings, model["id"])
    assert files == ["part-0.parquet"] and counts == (N_ENTITIES, N_ENTITIES)
    staging = Path(settings.scores.path).parent / ".scores.staging"
    assert not staging.exists() or not [p for p in staging.iterdir() if p.name.startswith("trash-")]
