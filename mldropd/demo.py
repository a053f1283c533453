"""The demo home: a config, the stories' feature data (mldropd.demo_story) and three real model
files; its history is made by mldropd.demo_history. The generic synthetic features and the two
models below (f00, f01, ...) are what the tests and benchmarks build their homes from."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mldropd.demo_history import check_home
from mldropd.demo_story import DRIFTING, PAUSED, RETRIED, make_story_models, write_story_features
from mldropd.notebook import save_model

DEMO_ENTITIES = 20_000  # customers per day: the 30 days' history builds in a few minutes

DEMO_CONFIG = """\
# mldropd demo home: every path is relative to this file. See config.example.toml for all keys.
[server]
host = "127.0.0.1"
port = {port}

[features]
kind = "parquet"
path = "features"
entity_key = "entity_id"
date_column = "dt"

[scheduler]
sweep = "0 6 * * *"
timezone = "UTC"

retry_delay = 60  # a failed demo run is tried again after a minute

[dq]
av_max_rows = 4000  # the demo's slices are small: a few thousand rows a side are plenty

[email]
# No smtp_host: report emails are written as .eml files to the outbox folder.
outbox = "outbox"
"""


def feature_names(n_features: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n_features)]


def make_features(n_entities: int, n_features: int, day_index: int, seed: int = 7) -> pa.Table:
    """One day of features: entity_id plus n_features float columns, drifting slowly by day."""
    rng = np.random.default_rng(seed + day_index)
    columns: dict[str, np.ndarray] = {"entity_id": np.arange(n_entities, dtype=np.int64)}
    shift = 0.02 * day_index
    for i, name in enumerate(feature_names(n_features)):
        values = rng.normal(loc=shift * (i % 3), scale=1.0 + 0.1 * (i % 5), size=n_entities)
        columns[name] = values
    return pa.table(columns)


def write_features(
    root: Path, dates: list[dt.date], n_entities: int, n_features: int, seed: int = 7
) -> None:
    """Write one Parquet file per date under root/dt=YYYY-MM-DD/."""
    for index, day in enumerate(sorted(dates)):
        folder = root / f"dt={day.isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(
            make_features(n_entities, n_features, index, seed), folder / "part-0.parquet"
        )


def training_data(n_rows: int, n_features: int, seed: int = 11) -> tuple[Any, np.ndarray]:
    """A labelled frame for the demo models: the label depends on a handful of features."""
    import pandas as pd

    frame = make_features(n_rows, n_features, 0, seed).to_pandas().drop(columns="entity_id")
    logit = (
        1.2 * frame["f00"]
        - 0.8 * frame["f03"]
        + 0.5 * frame["f07"] * frame["f01"]
        + 0.3 * np.abs(frame["f05"])
        - 0.4
    )
    rng = np.random.default_rng(seed)
    label = (rng.random(n_rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(frame), label


def make_demo_models(folder: Path, n_features: int, email: str, n_rows: int = 20_000) -> list[Path]:
    """Fit and save the two demo models; return their paths."""
    import lightgbm as lgb
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    x, y = training_data(n_rows, n_features)
    gbm_features = feature_names(n_features)[: min(20, n_features)]
    gbm = lgb.LGBMClassifier(n_estimators=60, num_leaves=15, learning_rate=0.1, verbose=-1)
    gbm.fit(x[gbm_features], y)
    lr_features = feature_names(n_features)[: min(10, n_features)]
    pipeline = Pipeline(
        [
            ("signed_log", FunctionTransformer(lambda a: np.sign(a) * np.log1p(np.abs(a)))),
            ("scale", StandardScaler()),
            ("model", LogisticRegression(max_iter=500)),
        ]
    )
    pipeline.fit(x[lr_features], y)
    folder.mkdir(parents=True, exist_ok=True)
    sample = x.head(200)
    return [
        save_model(
            folder / "churn_lgbm.dill",
            pipeline=gbm,
            features=gbm_features,
            name="churn_lgbm",
            email=email,
            schedule="daily",
            sample=sample,
            meta={"description": "demo LightGBM classifier", "library": "lightgbm"},
        ),
        save_model(
            folder / "churn_logreg.dill",
            pipeline=pipeline,
            features=lr_features,
            name="churn_logreg",
            email=email,
            schedule="weekly:mon",
            sample=sample,
            meta={"description": "demo Pipeline with a FunctionTransformer lambda"},
        ),
    ]


def write_demo_home(
    home: Path,
    *,
    port: int = 8080,
    n_entities: int = DEMO_ENTITIES,
    email: str = "admin@example.com",
    today: dt.date | None = None,
) -> list[Path]:
    """Create the demo home (idempotent: existing parts are kept); return the model files."""
    check_home(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "config.toml"
    if not config.exists():
        config.write_text(DEMO_CONFIG.format(port=port))
    write_story_features(home / "features", today or dt.datetime.now(dt.UTC).date(), n_entities)
    models = home / "models"
    paths = [models / f"{name}.dill" for name in (DRIFTING, RETRIED, PAUSED)]
    if not all(p.exists() for p in paths):
        paths = make_story_models(models, email)
    return paths
