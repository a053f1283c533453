"""Bad uploads get a clear 4xx naming every problem, and leave no row and no artifact."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import numpy as np
import pytest
from litestar.testing import TestClient
from sklearn.linear_model import LogisticRegression

from mldropd.settings import Settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    settings.limits.max_upload_mb = 1
    return settings


@pytest.fixture
def token(make_user: Callable[..., str]) -> str:
    return make_user("ann@example.com")


def _fitted() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


def _gbm() -> Any:
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=2)


class Evil:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def _dill(obj: Any) -> bytes:
    return dill.dumps(obj, recurse=True)


def _cases(tmp: Path) -> list[tuple[str, bytes, dict[str, str], int, dict[str, str]]]:
    """(case, file bytes, form fields, status, {field: words in the message})."""
    good = {"pipeline": _fitted(), "features": ["f00", "f01"]}
    valid = _dill(good)
    return [
        ("empty", b"", {}, 422, {"file": "empty"}),
        ("text", b"hello, I am a CSV file\n1,2,3\n", {}, 422, {"file": "not a pickle"}),
        ("truncated", valid[: len(valid) // 2], {}, 422, {"file": "truncated"}),
        ("a list", _dill([1, 2, 3]), {}, 422, {"file": "holds a list"}),
        (
            "a bare estimator",
            _dill(_gbm()),
            {},
            422,
            {"file": "the file holds an LGBMClassifier, not a model object"},
        ),
        (
            "no pipeline, no features",
            _dill({"name": "x"}),
            {},
            422,
            {"pipeline": "missing", "features": "missing"},
        ),
        (
            "features not strings",
            _dill({**good, "features": ["f00", 3]}),
            {},
            422,
            {"features": "column names"},
        ),
        (
            "unknown feature",
            _dill({**good, "features": ["f00", "age_days"]}),
            {},
            422,
            {"features": "`features` lists `age_days`, which the feature store does not have"},
        ),
        ("invalid name", valid, {"name": "Bad Name!"}, 422, {"name": "not valid"}),
        (
            "unknown schedule",
            valid,
            {"schedule": "every tuesday"},
            422,
            {"schedule": "unknown schedule"},
        ),
        (
            "not a predictor",
            _dill({"pipeline": 42, "features": ["f00"]}),
            {},
            422,
            {"pipeline": "`pipeline` is an int, which has no predict_proba or predict"},
        ),
        (
            "dry run raises",
            _dill({"pipeline": lambda f: 1 / 0, "features": ["f00"]}),
            {},
            422,
            {"pipeline": "ZeroDivisionError"},
        ),
        (
            "dry run wrong length",
            _dill({"pipeline": lambda f: np.zeros(3), "features": ["f00"]}),
            {},
            422,
            {"pipeline": "returned 3 scores"},
        ),
        (
            "evil reduce",
            pickle.dumps({"pipeline": Evil(tmp / "MARKER"), "features": ["f00"]}),
            {},
            422,
            {"file": "system"},
        ),
        ("too large", os.urandom(2 * 1024 * 1024), {}, 413, {"file": "larger than the limit"}),
    ]


def test_every_bad_upload_is_refused_with_its_reason(
    live_client: TestClient[Any], token: str, settings: Settings, tmp_path: Path
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    for case, content, form, status, expected in _cases(tmp_path):
        response = live_client.post(
            "/api/v1/models", headers=headers, files={"file": ("model.dill", content)}, data=form
        )
        assert response.status_code == status, (case, response.text)
        errors = response.json()["errors"]
        for field, words in expected.items():
            messages = [e["message"] for e in errors if e["field"] == field]
            assert any(words in m for m in messages), (case, field, errors)
    assert not (tmp_path / "MARKER").exists(), "the evil pickle was executed"
    assert live_client.get("/api/v1/models", headers=headers).json() == []
    artifacts = Path(settings.storage.path)
    assert not artifacts.exists() or not [p for p in artifacts.rglob("*") if p.is_file()]


def test_missing_file_field(live_client: TestClient[Any], token: str) -> None:
    response = live_client.post(
        "/api/v1/models", headers={"Authorization": f"Bearer {token}"}, data={"name": "x"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "file"


def test_quota(
    live_client: TestClient[Any], make_user: Callable[..., str], model_files: dict[str, Path]
) -> None:
    token = make_user("quota@example.com", quota=1)
    headers = {"Authorization": f"Bearer {token}"}

    def up(path: Path) -> Any:
        with open(path, "rb") as f:
            return live_client.post(
                "/api/v1/models", headers=headers, files={"file": (path.name, f)}
            )

    assert up(model_files["lgbm"]).status_code == 201
    full = up(model_files["logreg"])
    assert full.status_code == 409
    assert "quota is 1" in full.json()["errors"][0]["message"]
    assert "churn_lgbm" in full.json()["errors"][0]["message"]
    assert up(model_files["lgbm"]).json()["version"] == 2  # a new version needs no new slot
