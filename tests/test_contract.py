"""The model object contract (v1) and the notebook helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dill
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from mldropd import save_model
from mldropd.contract import check_model_object, feature_importance
from mldropd.modelcall import ModelOutputError, check_scores, predict


def _lr() -> LogisticRegression:
    rng = np.random.default_rng(1)
    x = pd.DataFrame(rng.normal(size=(100, 2)), columns=["a", "b"])
    return LogisticRegression().fit(x, (x["a"] > 0).astype(int))


def fields(obj: Any) -> dict[str, str]:
    summary, problems = check_model_object(obj)
    assert (summary is None) == bool(problems)
    return {p.field: p.message for p in problems}


def test_minimal_object_and_defaults() -> None:
    summary, problems = check_model_object(
        {"pipeline": _lr(), "features": ["a", "b"], "future_key": 1}
    )
    assert problems == [] and summary is not None
    assert (summary.output, summary.input, summary.call) == ("proba", "pandas", "predict_proba")
    assert summary.ignored_keys == ["future_key"]  # unknown keys are kept and ignored
    assert set(summary.importance) == {"a", "b"} and summary.importance["a"] > 0


def test_every_problem_is_reported_at_once() -> None:
    problems = fields(
        {
            "features": "a",
            "name": "Bad!",
            "schedule": "hourly",
            "output": "proba:x",
            "input": "arrow",
            "params": {"engine": "gpu", "timeout_s": -1},
            "dq": {"psi_warn": "high"},
            "owner_email": "nope",
        }
    )
    assert set(problems) == {
        "pipeline",
        "features",
        "name",
        "schedule",
        "output",
        "input",
        "params.engine",
        "params.timeout_s",
        "dq.psi_warn",
        "owner_email",
    }
    assert "hourly" in problems["schedule"]


@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        ([1], "file", "holds a list"),
        ({"pipeline": 3, "features": ["a"]}, "pipeline", "no predict_proba or predict"),
        ({"pipeline": _lr(), "features": []}, "features", "non-empty list"),
        ({"pipeline": _lr(), "features": ["a", "a"]}, "features", "more than once"),
        ({"pipeline": np.mean, "features": ["a"], "output": "proba"}, "output", "no predict_proba"),
        (
            {"pipeline": _lr(), "features": ["a"], "dq": {"psi_warn": 0.3, "psi_alert": 0.2}},
            "dq.psi_warn",
            "above",
        ),
    ],
)
def test_single_problems(obj: Any, field: str, words: str) -> None:
    assert words in fields(obj)[field]


def test_callable_and_output_columns() -> None:
    x = pd.DataFrame({"a": [0.1, -2.0], "b": [1.0, 2.0]})
    lr = _lr()
    assert np.array_equal(predict(lr, x, "predict_proba", "proba"), lr.predict_proba(x)[:, 1])
    assert np.array_equal(predict(lr, x, "predict_proba", "proba:0"), lr.predict_proba(x)[:, 0])
    assert np.array_equal(predict(lr, x, "predict_proba", "predict"), lr.predict(x))
    assert list(predict(lambda f: f["a"] * 2, x, "callable", "predict")) == [0.2, -4.0]
    with pytest.raises(ModelOutputError, match="column 5"):
        predict(lr, x, "predict_proba", "proba:5")
    with pytest.raises(ModelOutputError, match="1 NaN"):
        check_scores(np.array([0.1, np.nan]), 2)


def test_importance_from_coef_and_pipeline() -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), _lr())
    pipe.fit(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]}), [0, 0, 1, 1])
    assert set(feature_importance(pipe, ["a", "b"])) == {"a", "b"}
    assert feature_importance(np.mean, ["a"]) == {}


def test_save_model_checks_and_round_trips(tmp_path: Path) -> None:
    sample = pd.DataFrame({"a": [0.5, -1.0], "b": [0.0, 1.0]})
    path = save_model(
        tmp_path / "m.dill",
        pipeline=_lr(),
        features=["a", "b"],
        email="ann@example.com",
        schedule="weekly:fri",
        sample=sample,
    )
    with open(path, "rb") as f:
        obj = dill.load(f)
    assert obj["owner_email"] == "ann@example.com" and obj["schedule"] == "weekly:fri"
    with pytest.raises(ValueError, match="schedule"):
        save_model(tmp_path / "bad.dill", pipeline=_lr(), features=["a"], schedule="sometimes")
    assert not (tmp_path / "bad.dill").exists()
    with pytest.raises(ModelOutputError):
        save_model(
            tmp_path / "nan.dill",
            pipeline=lambda f: np.full(len(f), np.nan),
            features=["a"],
            sample=sample,
        )


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "pipeline",
                "features",
                "name",
                "schedule",
                "output",
                "input",
                "params",
                "dq",
                "meta",
                "entity_key",
                "x",
            ]
        ),
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=8),
            st.lists(st.text(max_size=4), max_size=3),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        ),
    )
)
def test_validator_never_crashes_on_arbitrary_dicts(obj: dict[str, Any]) -> None:
    summary, problems = check_model_object(obj)
    assert (summary is None) == bool(problems)
    assert all(p.field and p.message for p in problems)
