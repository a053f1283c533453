"""A home with one registered model that scores each row with its f00 (tests of the key
policies on both engines): which of a key's rows was scored shows in the score."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.engine import Engine

from mldropd import save_model
from mldropd.auth import create_user
from mldropd.batch.plan import plan_batch
from mldropd.batch.run import BatchJob
from mldropd.batch.write import partition_dir
from mldropd.db import init_db, make_engine, session_scope
from mldropd.intake import UploadForm, register_file
from mldropd.records import Model, ModelRun
from mldropd.settings import Settings, load_settings
from mldropd.states import Trigger
from mldropd.store import make_store


def f00_model() -> Callable[[Any], Any]:
    """Scores each row with its f00, so a score tells which of a key's rows was scored."""

    def score(frame: Any) -> Any:
        return frame["f00"].to_numpy()

    return score


@dataclass
class Lab:
    settings: Settings
    db: Engine
    model_id: int

    def run(self, day: dt.date, **features: str) -> ModelRun:
        settings = Settings.from_dict(self.settings.to_dict())
        for key, value in features.items():
            setattr(settings.features, key, value)
        with session_scope(self.db) as s:
            model = s.get(Model, self.model_id)
            batch, covered = plan_batch(s, day, Trigger.MANUAL, [model], force=True)  # type: ignore[list-item]
            assert batch is not None and batch.id is not None
            batch_id, run_id = batch.id, covered[self.model_id].id
        BatchJob(settings, batch_id, engine=self.db, retries=False).execute()
        with session_scope(self.db) as s:
            run = s.get(ModelRun, run_id)
            assert run is not None
            s.expunge(run)
        return run

    def scores(self, day: dt.date) -> pa.Table:
        return pq.read_table(partition_dir(self.settings.scores.path, day, self.model_id))


def make_lab(home: Path, features: str) -> Lab:
    (home / "config.toml").write_text(
        f"[features]\n{features}\n[engine]\nbatch_rows = 1000\nvalidate_sample_rows = 200\n"
        "[dq]\nav_max_rows = 500\n"
    )
    settings = load_settings(home / "config.toml", env={})
    db = make_engine(settings.database.path)
    init_db(db)
    user = create_user(db, "ann@example.com")[0]
    path = save_model(home / "f00.dill", pipeline=f00_model(), features=["f00"], name="f00")
    model, _ = register_file(
        db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
    )
    assert model.id is not None
    return Lab(settings, db, model.id)
