"""What every scoring engine takes and gives back: one typed request for a batch's scoring
pass, one Outcome per model run, and the choice of engine in one place."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mldropd.settings import EngineSettings, FeatureSettings


@dataclass(frozen=True)
class ModelTask:
    """One model run to score: its ids, where its file is, how to call it, where scores go."""

    model_run_id: int
    model_id: int
    model_version: int
    owner_id: int  # models of different owners never share a process
    path: Path  # local copy of the dill file (checked against its sha256)
    features: tuple[str, ...]
    input: str
    call: str
    output: str
    entity_key: str
    out_dir: Path  # staging folder of its partition
    timeout_s: float  # wall-clock limit of its own code (load + every batch), kept by us
    pipeline_type: str = ""  # "lightgbm.sklearn.LGBMClassifier": what its host should import

    def spec(self) -> dict[str, object]:
        """What the model host needs to call the model (never a path of ours)."""
        return {
            "features": list(self.features),
            "input": self.input,
            "call": self.call,
            "output": self.output,
        }


@dataclass(frozen=True)
class ScoringRequest:
    """One pass over one feature slice for every due model."""

    features: FeatureSettings
    slice_date: dt.date
    batch_rows: int
    scored_at: dt.datetime
    tasks: tuple[ModelTask, ...]
    # Rows of null or duplicated entity keys left out (mldropd.batch.keys, as plain data).
    key_filters: tuple[dict[str, Any], ...] = ()

    @property
    def columns(self) -> list[str]:
        """The entity keys, then the union of the models' features, each once."""
        keys = [t.entity_key for t in self.tasks]
        return list(dict.fromkeys(keys + [f for t in self.tasks for f in t.features]))


@dataclass
class Outcome:
    """What became of one model run in the scoring pass."""

    rows: int | None = None
    seconds: float | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


Progress = Callable[[str, dict[int, int]], None]  # (phase, rows scored per model run)


class ScoringEngine(Protocol):
    """Scores a request; a model's failure is its Outcome, never an exception."""

    name: str

    def score(
        self,
        request: ScoringRequest,
        *,
        heartbeat: Callable[[], None],
        progress: Progress | None = None,
        observe: Callable[[Any], None] | None = None,
    ) -> dict[int, Outcome]:
        """observe: called with every record batch of the slice as read (the trusted side's
        DQ sample is drawn there: no second read); an engine without such a read ignores it."""
        ...


def timeout_of(params: dict[str, object], engine: EngineSettings) -> float:
    """A model's time limit: its own params.timeout_s, capped by the operator's maximum."""
    own = params.get("timeout_s")
    wanted = own if isinstance(own, int) and own > 0 else engine.model_timeout_s
    return float(min(wanted, engine.max_model_timeout_s))


def choose_engine(
    features: FeatureSettings,
    engine: EngineSettings,
    requested: dict[str, str | None],
    *,
    count_rows: Callable[[], int],
    spark_installed: bool,
    under_spark_submit: bool,
) -> tuple[str, str]:
    """One engine for the whole batch, and why: spark if anyone asks, auto by slice size.

    requested: model name -> its params.engine (None when it does not say)."""
    if features.kind == "spark_table":
        return "spark", "[features] kind = spark_table"
    who = [name for name, e in requested.items() if e == "spark"]
    if engine.default == "spark" or who:
        return "spark", f"requested by {', '.join(who or ['[engine] default'])}"
    if "auto" not in {e or engine.default for e in requested.values()}:
        return "local", "requested"
    if under_spark_submit:
        return "spark", "auto, started by spark-submit"
    rows = count_rows()
    if rows < engine.spark_min_rows:
        return "local", f"auto: {rows} rows < [engine] spark_min_rows {engine.spark_min_rows}"
    if not spark_installed:
        return "local", f"auto: {rows} rows, but pyspark is not installed"
    return "spark", f"auto: {rows} rows >= [engine] spark_min_rows {engine.spark_min_rows}"
