"""Human units and articles (mldropd.text), and where they are printed."""

from __future__ import annotations

import pytest

from mldropd.text import duration, per_second, with_article


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0.004, "0.00 s"),
        (0.25, "0.25 s"),
        (3.46, "3.5 s"),
        (40, "40 s"),
        (40.0111, "40 s"),
        (59.6, "1 min"),
        (200, "3 min 20 s"),
        (600, "10 min"),
        (3900, "1 h 5 min"),
        (3600, "1 h"),
        (21600, "6 h"),
        (90061, "1 d 1 h"),
        (None, "—"),
    ],
)
def test_durations_in_human_units(seconds: float | None, words: str) -> None:
    assert duration(seconds) == words


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("XGBClassifier", "an XGBClassifier"),
        ("LGBMClassifier", "an LGBMClassifier"),
        ("SVC", "an SVC"),
        ("Pipeline", "a Pipeline"),
        ("RandomForestClassifier", "a RandomForestClassifier"),
        ("IsolationForest", "an IsolationForest"),
        ("OneHotEncoder", "a OneHotEncoder"),
        ("UMAP", "a UMAP"),
        ("Booster", "a Booster"),
        ("ElasticNet", "an ElasticNet"),
        ("hour", "an hour"),
        ("function", "a function"),
    ],
)
def test_articles_for_class_names(name: str, words: str) -> None:
    assert with_article(name) == words


@pytest.mark.parametrize(
    ("rate", "words"),
    [(85_000.4, "85,000 rows/s"), (12.6, "13 rows/s"), (0.5, "0.5 rows/s"), (None, "—")],
)
def test_rates_in_human_units(rate: float | None, words: str) -> None:
    assert per_second(rate) == words


def test_the_contract_names_types_with_the_right_article() -> None:
    from lightgbm import LGBMClassifier

    from mldropd.contract import check_model_object

    _, problems = check_model_object(LGBMClassifier())
    assert problems[0].message.startswith("the file holds an LGBMClassifier, not a model object")
    _, problems = check_model_object({"pipeline": 3, "features": ["a"]})
    assert problems[0].message.startswith("`pipeline` is an int, which has no predict_proba")
    _, problems = check_model_object({"pipeline": "x", "features": ["a"]})
    assert problems[0].message.startswith("`pipeline` is a str, which")
