"""Row factories: records written straight into the database, for tests of what reads them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlmodel import select as sql_select

from mldropd.db import session_scope
from mldropd.records import BatchRun, DQResult, Model, ModelRun, ModelVersion, User
from mldropd.settings import Settings
from tests.support.home import today


def add_model(
    engine: Any,
    owner: str,
    name: str,
    *,
    versions: int = 1,
    run_status: str = "succeeded",
    quarantined: bool = False,
) -> tuple[int, int]:
    """A paused model with versions, one run (yesterday) and its DQ row; (model id, run id)."""
    day = today() - dt.timedelta(days=1)
    with session_scope(engine) as s:
        user = s.exec(sql_select(User).where(User.email == owner)).one()
        model = Model(
            owner_id=user.id or 0, name=name, email=owner, status="paused", version=versions
        )
        s.add(model)
        s.flush()
        for v in range(1, versions + 1):
            s.add(
                ModelVersion(
                    model_id=model.id or 0,
                    version=v,
                    artifact_key=f"k/{name}/v{v}",
                    sha256="0" * 64,
                    size=1,
                    features=["f00"],
                    contract={},
                )
            )
        batch = BatchRun(date=day, trigger="backfill", status="succeeded")
        s.add(batch)
        s.flush()
        run = ModelRun(
            batch_id=batch.id or 0,
            model_id=model.id or 0,
            model_version=versions,
            date=day,
            trigger="backfill",
            status=run_status,
            rows=10,
            seconds=0.5,
            quarantined=quarantined,
            error="boom" if run_status == "failed" else None,
        )
        s.add(run)
        s.flush()
        s.add(
            DQResult(
                model_run_id=run.id or 0,
                model_id=model.id or 0,
                date=day,
                psi=0.01,
                psi_noise=0.002,
                auc=0.5,
                reason=f"{name} ok",
            )
        )
        return model.id or 0, run.id or 0


def hold_scores(settings: Settings, model_id: int, day: dt.date) -> None:
    """A partition held back by the DQ gate, for publish/discard."""
    held = Path(settings.dq.quarantine_path) / f"dt={day.isoformat()}" / f"model={model_id}"
    held.mkdir(parents=True, exist_ok=True)
    (held / "part-0.parquet").write_bytes(b"held")
