"""The command line, as scripts use it: real subprocesses on a temporary home."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dill
import numpy as np
import pytest

from tests.support.cli import mldropd
from tests.support.home import today

pytestmark = pytest.mark.slow  # every test runs the CLI in real processes


def test_users_add_prints_token_last(home: Path) -> None:
    result = mldropd(home, "users", "add", "Ann@Example.com", "--admin", "--quota", "3")
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("mld_") and len(token) > 40
    again = mldropd(home, "users", "add", "ann@example.com")
    assert again.returncode != 0 and "exists already" in again.stderr


def test_models_check_ok_and_problems(
    home: Path, model_files: dict[str, Path], tmp_path: Path
) -> None:
    ok = mldropd(home, "models", "check", str(model_files["logreg"]))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: the model can be deployed" in ok.stdout
    assert "serialized Python functions" in ok.stdout and "dry run: 1000 rows" in ok.stdout
    bad = tmp_path / "bad.dill"
    bad.write_bytes(
        dill.dumps({"pipeline": np.mean, "features": ["f00", "age_days"], "schedule": "hourly"})
    )
    result = mldropd(home, "models", "check", str(bad))
    assert result.returncode == 1
    assert "schedule: unknown schedule 'hourly'" in result.stderr


def test_run_scores_due_models_and_check_config(home: Path, model_files: dict[str, Path]) -> None:
    token_out = mldropd(home, "users", "add", "ann@example.com")
    assert token_out.returncode == 0
    from litestar.testing import TestClient

    from mldropd.app import create_app
    from mldropd.settings import load_settings

    settings = load_settings(home / "config.toml", env={})
    token = token_out.stdout.strip().splitlines()[-1]
    with TestClient(create_app(settings), timeout=120) as client:
        for path, schedule in (
            (model_files["lgbm"], "daily"),
            (model_files["logreg"], "monthly:28"),
        ):
            with open(path, "rb") as f:
                response = client.post(
                    "/api/v1/models",
                    headers={"Authorization": f"Bearer {token}"},
                    files={"file": (path.name, f)},
                    data={"schedule": schedule},
                )
            assert response.status_code == 201
    day = today()
    not_monthly = day if day.day != 28 else day - dt.timedelta(days=1)
    result = mldropd(home, "run", "--date", not_monthly.isoformat())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"churn_lgbm (id 1) {not_monthly}: succeeded, 3000 rows" in result.stdout
    assert "churn_logreg" not in result.stdout  # not due on that date
    again = mldropd(home, "run", "--date", not_monthly.isoformat())
    assert "succeeded" in again.stdout  # already scored: nothing is scored twice
    forced = mldropd(home, "run", "--date", not_monthly.isoformat(), "--model", "2")
    assert forced.returncode == 0 and "churn_logreg (id 2)" in forced.stdout
    assert mldropd(home, "run", "--date", "2026-13-01").returncode != 0

    config = mldropd(home, "check-config")
    assert config.returncode == 0
    assert "[engine]" in config.stdout and "batch_rows = 1000" in config.stdout
    assert "OK: the configuration is valid" in config.stdout


def test_broken_config_stops_with_the_key(home: Path) -> None:
    (home / "config.toml").write_text("[engine]\nbatch_row = 5\n")
    result = mldropd(home, "check-config")
    assert result.returncode != 0
    assert "unknown key 'batch_row' in [engine]" in result.stderr
