"""A registry database at scale for the planning, API and dashboard benchmarks: users, models,
versions, a year of daily runs and DQ results, written with bulk inserts."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
CHUNK = 20_000


@dataclass
class Registry:
    """What was written: the admin's token, the model ids and the last scored date."""

    admin_token: str
    model_ids: list[int]
    last_day: dt.date


def dq_details(seed: int = 0) -> dict[str, Any]:
    """A real DQ details document (checks, thresholds, histograms, PSI, AV), about 2 KB."""
    import pandas as pd

    from mldropd.dq.evaluate import Thresholds, evaluate

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(2):
        f = pd.DataFrame(rng.standard_normal((2000, 5)), columns=list("abcde"))
        f["score"] = rng.random(2000)
        frames.append(f)
    report = evaluate(
        frames[0],
        frames[1],
        features=list("abcde"),
        thresholds=Thresholds(0.1, 0.25, 0.6, 0.75),
        is_probability=True,
        av_max_rows=2000,
    )
    return report.details


def _insert(engine: Engine, table: Any, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        for start in range(0, len(rows), CHUNK):
            conn.execute(insert(table), rows[start : start + CHUNK])


def populate(
    engine: Engine,
    *,
    models: int,
    days: int,
    due: int,
    day: dt.date,
    n_features: int = 50,
    users: int = 10,
    dq: bool = True,
) -> Registry:
    """`models` models of `users` users (plus an admin); the first `due` are due on `day`.

    Every model has `days` daily succeeded runs before `day` and, with dq, a DQ result each."""
    from mldropd.auth import create_user

    _, token = create_user(engine, "admin@example.com", admin=True)
    owners = [create_user(engine, f"user{i}@example.com")[0].id for i in range(users)]
    other_days = [w for w in WEEKDAYS if w != WEEKDAYS[day.weekday()]]
    now = dt.datetime.now(dt.UTC)
    features = [f"f{i:02d}" for i in range(n_features)]
    contract = {
        "input": "pandas",
        "call": "predict_proba",
        "output": "proba",
        "params": {},
        "features": features,
        "entity_key": "entity_id",
    }
    hist = {
        "counts": [int(c) for c in np.histogram(np.random.default_rng(1).random(500), 20)[0]],
        "edges": [i / 20 for i in range(21)],
    }
    _insert(
        engine,
        Model.__table__,
        [
            {
                "id": i + 1,
                "owner_id": owners[i % users],
                "name": f"model-{i:04d}",
                "email": f"user{i % users}@example.com",
                "schedule": "daily" if i < due else f"weekly:{other_days[i % len(other_days)]}",
                "status": "active",
                "version": 1,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(models)
        ],
    )
    _insert(
        engine,
        ModelVersion.__table__,
        [
            {
                "model_id": i + 1,
                "version": 1,
                "artifact_key": f"u/model-{i:04d}/v1/model.dill",
                "sha256": "0" * 64,
                "size": 1000,
                "features": features,
                "contract": contract,
                "dry_run": {"rows": 1000, "histogram": hist},
                "scan": {"globals": []},
                "uploaded_by": "bench",
                "uploaded_at": now,
            }
            for i in range(models)
        ],
    )
    dates = [day - dt.timedelta(days=days - d) for d in range(days)]
    _insert(
        engine,
        BatchRun.__table__,
        [
            {
                "id": b + 1,
                "date": d,
                "trigger": "schedule",
                "status": "succeeded",
                "created_at": now,
            }
            for b, d in enumerate(dates)
        ],
    )
    runs = [
        {
            "batch_id": b + 1,
            "model_id": m + 1,
            "model_version": 1,
            "date": d,
            "trigger": "schedule",
            "status": "succeeded",
            "attempt": 1,
            "rows": 1_000_000,
            "seconds": 12.5,
            "slice_date": d,
            "created_at": now,
            "started_at": now,
            "finished_at": now,
        }
        for b, d in enumerate(dates)
        for m in range(models)
    ]
    _insert(engine, ModelRun.__table__, runs)
    if dq:
        details = dq_details()
        psi = np.random.default_rng(2).gamma(1.0, 0.05, size=len(runs))
        _insert(
            engine,
            DQResult.__table__,
            [
                {
                    "model_run_id": i + 1,
                    "model_id": r["model_id"],
                    "date": r["date"],
                    "reference_date": r["date"] - dt.timedelta(days=1),
                    "psi": float(p),
                    "psi_noise": 0.0002,
                    "auc": 0.52,
                    "ks": 0.01,
                    "status": "ok" if p < 0.1 else "warn" if p < 0.25 else "alert",
                    "reason": "PSI 0.05 < 0.1; AUC 0.52 < 0.6",
                    "details": details,
                    "created_at": now,
                }
                for i, (r, p) in enumerate(zip(runs, psi, strict=True))
            ],
        )
    return Registry(token, list(range(1, models + 1)), dates[-1] if dates else day)
