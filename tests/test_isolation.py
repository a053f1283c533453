"""A model that raises, hangs, exceeds its memory limit, returns NaN or the wrong length, or kills
its process fails alone: the good models of the same batch are still scored, in the same attempt.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from litestar.testing import TestClient

from mldropd import save_model
from mldropd.settings import Settings
from tests.support.home import today

FEATURES = ["f00", "f01", "f02"]


def _bad_models() -> dict[str, Callable[[Any], Any]]:
    """Callables that behave in the 500-row dry run and misbehave on a 1,000-row batch.

    Built inside a function so dill stores them by value, as a notebook's would be.
    """

    def raises(frame: Any) -> Any:
        if len(frame) > 500:
            raise RuntimeError("feature store schema drifted")
        return np.full(len(frame), 0.5)

    def hangs(frame: Any) -> Any:
        import time

        if len(frame) > 500:
            time.sleep(3600)
        return np.full(len(frame), 0.5)

    def nan(frame: Any) -> Any:
        out = np.full(len(frame), 0.5)
        if len(frame) > 500:
            out[3] = np.nan
        return out

    def short(frame: Any) -> Any:
        return np.full(len(frame) if len(frame) <= 500 else len(frame) - 1, 0.5)

    def exits(frame: Any) -> Any:
        import os

        if len(frame) > 500:
            os._exit(3)
        return np.full(len(frame), 0.5)

    def hog(frame: Any) -> Any:
        if len(frame) > 500:  # 8 GB: over the sandbox's address-space limit (4096 MB in tests)
            return np.ones(10**9)[: len(frame)]
        return np.full(len(frame), 0.5)

    return {
        "raises": raises,
        "hangs": hangs,
        "nan": nan,
        "short": short,
        "exits": exits,
        "hog": hog,
    }


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.engine.validate_sample_rows = 500
    return settings


def test_each_bad_model_fails_alone(
    live_client: TestClient[Any],
    settings: Settings,
    home: Path,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    token = make_user("ann@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    paths = [model_files["lgbm"]]
    for name, fn in _bad_models().items():
        params = {"timeout_s": 8} if name == "hangs" else None
        paths.append(
            save_model(
                tmp_path / f"{name}.dill", pipeline=fn, features=FEATURES, name=name, params=params
            )
        )
    ids = dict(_upload(live_client, headers, p) for p in paths)
    day = today()
    result = _run_day(home, day)
    assert result.returncode == 1, result.stdout + result.stderr
    runs = _runs(live_client, headers, day)
    assert len(runs) == 7
    good = runs[ids["churn_lgbm"]]
    assert good["status"] == "succeeded" and good["rows"] == 3000, good
    expected = {
        "raises": "RuntimeError: feature store schema drifted",
        "hangs": "did not finish within its time limit of 8 s",
        "nan": "returned 1 NaN or infinite scores",
        "short": "returned 999 scores for 1000 rows",
        "exits": "crashed its sandbox on batch 0: the process exited with code 3",
        "hog": "Unable to allocate",
    }
    for name, message in expected.items():
        run = runs[ids[name]]
        assert run["status"] == "failed", (name, run)
        assert message in run["error"], (name, run["error"])
        assert run["rows"] is None
        part = Path(settings.scores.path) / f"dt={day}" / f"model={ids[name]}"
        assert not part.exists(), f"{name} left a partition"
    assert (
        Path(settings.scores.path) / f"dt={day}" / f"model={ids['churn_lgbm']}" / "part-0.parquet"
    ).exists()
    for name in expected:  # every owner is told, in plain words
        assert name in result.stdout
    assert dt.date.fromisoformat(good["date"]) == day


def test_a_model_that_raises_then_hangs_does_not_hold_up_its_owners_other_model(
    live_client: TestClient[Any],
    home: Path,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    """It raises on its first batch and would hang on the next, which is already waiting in the
    owner's host (pipelined): the host skips it there, so the owner's other model is scored
    without waiting out the failed model's time limit."""
    token = make_user("ann@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    bad = save_model(
        tmp_path / "flaky.dill",
        pipeline=_raises_then_hangs(),
        features=FEATURES,
        name="flaky",
        params={"timeout_s": 200},
    )
    ids = dict(_upload(live_client, headers, p) for p in (model_files["lgbm"], bad))
    day = today()
    started = time.monotonic()
    result = _run_day(home, day)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    runs = _runs(live_client, headers, day)
    good, failed = runs[ids["churn_lgbm"]], runs[ids["flaky"]]
    assert good["status"] == "succeeded" and good["rows"] == 3000, good
    assert failed["status"] == "failed", failed
    assert "RuntimeError: the first batch failed" in failed["error"], failed["error"]
    assert took < 100, f"the run took {took:.0f} s: it waited out the failed model's 200 s"


def _raises_then_hangs() -> Callable[[Any], Any]:
    """Behaves in the 500-row dry run; in the scoring host it raises on its first batch and
    hangs on every later one (the calls are counted in the host, which keeps the model)."""
    calls: list[int] = []

    def flaky(frame: Any) -> Any:
        import time

        if len(frame) <= 500:
            return np.full(len(frame), 0.5)
        calls.append(len(frame))
        if len(calls) == 1:
            raise RuntimeError("the first batch failed")
        time.sleep(3600)
        return np.full(len(frame), 0.5)

    return flaky


def _upload(client: TestClient[Any], headers: dict[str, str], path: Path) -> tuple[str, int]:
    """Upload a model file through the API: (its name, its id)."""
    with open(path, "rb") as f:
        response = client.post("/api/v1/models", headers=headers, files={"file": (path.name, f)})
    assert response.status_code == 201, response.text
    return response.json()["name"], response.json()["id"]


def _run_day(home: Path, day: dt.date) -> subprocess.CompletedProcess[str]:
    """`mldropd run --date day` in its own process, as an operator runs it."""
    config = str(home / "config.toml")
    return subprocess.run(
        [sys.executable, "-m", "mldropd", "run", "--config", config, "--date", day.isoformat()],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _runs(client: TestClient[Any], headers: dict[str, str], day: dt.date) -> dict[int, Any]:
    """The day's model runs through the API, by model id."""
    got = client.get("/api/v1/runs", headers=headers, params={"date": day.isoformat()})
    return {r["model_id"]: r for r in got.json()}
