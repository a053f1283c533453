"""Scoring-table step: the feature slice of the date, the union of the models' columns, and a
local copy of each model file (checked against its sha256)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from mldropd.features import FeatureSource, Slice
from mldropd.records import Model, ModelRun, ModelVersion
from mldropd.store.base import ArtifactStore, sha256_file


@dataclass
class PreparedModel:
    """A model run ready to score: its record, version, local file and entity key."""

    run: ModelRun
    model: Model
    version: ModelVersion
    path: Path
    entity_key: str

    @property
    def features(self) -> list[str]:
        return list(self.version.features)


@dataclass
class ScoringTable:
    """What one pass over the slice needs: the slice, its columns, the models and the rejects."""

    slice: Slice | None
    columns: list[str] = field(default_factory=list)
    models: list[PreparedModel] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)  # model run id -> reason


def build_table(
    source: FeatureSource,
    store: ArtifactStore,
    day: dt.date,
    runs: list[tuple[ModelRun, Model, ModelVersion]],
    models_dir: Path,
) -> ScoringTable:
    """Resolve the slice, check every model's columns, fetch every artifact; reject per model."""
    table = ScoringTable(slice=source.slice_for(day))
    if table.slice is None:
        reason = source.describe_missing(day)
        table.rejected = {run.id: reason for run, _, _ in runs if run.id is not None}
        return table
    available = set(source.columns(table.slice.date))
    models_dir.mkdir(parents=True, exist_ok=True)
    for run, model, version in runs:
        assert run.id is not None
        entity_key = version.contract.get("entity_key") or source.settings.entity_key
        missing = [c for c in [entity_key, *version.features] if c not in available]
        if missing:
            table.rejected[run.id] = (
                f"the feature slice {table.slice.date} lacks {', '.join(missing)}, which the model "
                "needs; upload a version without them or add them to the feature store"
            )
            continue
        path = models_dir / f"model-run-{run.id}.dill"
        try:
            store.get_file(version.artifact_key, path)
        except Exception as exc:
            table.rejected[run.id] = f"the model file could not be read from the store: {exc}"
            continue
        if sha256_file(path) != version.sha256:
            table.rejected[run.id] = (
                f"the stored model file {version.artifact_key} does not match its sha256; "
                "upload the model again"
            )
            continue
        table.models.append(PreparedModel(run, model, version, path, entity_key))
    table.columns = list(
        dict.fromkeys(
            [m.entity_key for m in table.models] + [f for m in table.models for f in m.features]
        )
    )
    return table
