"""DQ step of a batch: compare each model's new partition with its previous one (see mldropd.dq).

The DQ of a batch reads each feature slice at most once. The adversarial classifiers need
(features, score) rows of both days; those rows come from one hash-chosen sample per slice and
entity key (mldropd.dq.sample), shared by every model of the batch: the current slice's sample
is drawn during the batch job's scoring read when the reader collects it (`current=`), else by
one read here; each reference slice's sample comes from the sample store (`store=`: kept when
that slice was scored), else by one read, for all the models that compare with it. Each model
then reads only its own two score partitions.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from mldropd.batch.table import PreparedModel
from mldropd.batch.write import previous_partition
from mldropd.dq.evaluate import DQReport, Thresholds, evaluate
from mldropd.dq.psi import psi
from mldropd.dq.sample import KeySample, SampleStore, sample_slice
from mldropd.features import FeatureSource
from mldropd.settings import DQSettings

log = logging.getLogger(__name__)

Sampler = Callable[[FeatureSource, dt.date, str, Sequence[str], int], pa.Table]


@dataclass
class QualityResult:
    """One model's DQ report, its reference date and the seconds of its own DQ work."""

    report: DQReport
    reference_date: dt.date | None
    seconds: float = 0.0  # its score partitions, PSI, KS, checks, AV; shared samples apart


@dataclass(frozen=True)
class ModelScores:
    """One model's staged scores and what its DQ needs."""

    model_run_id: int
    model_id: int
    features: list[str]
    entity_key: str
    current_part: Path
    is_probability: bool
    slice_rows: int | None = None  # entities it should have scored (the checks' scored share)
    overrides: dict[str, Any] | None = None
    importance: dict[str, float] | None = None


@dataclass
class BatchQuality:
    """Each model's result (or the error that stopped its DQ) and the shared sampling cost."""

    results: dict[int, QualityResult | Exception] = field(default_factory=dict)
    sample_seconds: float = 0.0
    slices_read: list[dt.date] = field(default_factory=list)
    slices_stored: list[dt.date] = field(default_factory=list)  # samples taken from the store


def model_scores(p: PreparedModel, staged: Path, slice_rows: int | None) -> ModelScores:
    """What the DQ of a prepared model needs, its staged partition given."""
    assert p.run.id is not None and p.model.id is not None
    contract = p.version.contract
    return ModelScores(
        model_run_id=p.run.id,
        model_id=p.model.id,
        features=p.features,
        entity_key=p.entity_key,
        current_part=staged,
        is_probability=contract["output"].startswith("proba"),
        slice_rows=slice_rows,
        overrides={**(contract.get("dq") or {}), **(p.model.dq or {})},
        importance=contract.get("importance"),
    )


def current_samples(models: Sequence[ModelScores], max_rows: int) -> dict[str, KeySample]:
    """Collectors for the scoring read: one per entity key, over the union of the models'
    features; feed each record batch of the slice to every collector, then pass
    `{key: s.table()}` as check_batch(current=...)."""
    columns: dict[str, list[str]] = defaultdict(list)
    for m in models:
        columns[m.entity_key].extend(m.features)
    return {
        key: KeySample(key, list(dict.fromkeys(cols)), max_rows) for key, cols in columns.items()
    }


def _read_scores(part: Path, key: str) -> pa.Table:
    """The (key, score) columns of a scores partition."""
    files = sorted(part.glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no scores files in {part}")
    return pa.concat_tables(pq.read_table(f, columns=[key, "score"]) for f in files)


def with_scores(sample: pa.Table, scores: pa.Table, key: str, features: list[str]) -> pd.DataFrame:
    """The sample's rows that have a score, in sample order: the model's features and score."""
    keys = sample.column(key)
    score_keys = scores.column(key)
    if score_keys.type != keys.type:
        score_keys = score_keys.cast(keys.type)
    # Narrow the (large) partition to the sample's keys first: a hash of 50,000 keys, not 1M.
    wanted = pc.is_in(score_keys, value_set=keys)
    score_keys, score_values = score_keys.filter(wanted), scores.column("score").filter(wanted)
    index = pc.index_in(keys, value_set=score_keys)
    present = index.is_valid()
    frame = sample.select(features).filter(present).to_pandas()
    frame["score"] = score_values.take(index.filter(present)).to_numpy(zero_copy_only=False)
    return frame


def feature_drift(
    current: pd.DataFrame,
    reference: pd.DataFrame | None,
    features: list[str],
    importance: dict[str, float],
    top: int,
) -> list[dict[str, Any]]:
    """PSI (same definition as for scores) of the model's most important features, on the DQ
    samples; the noise level says how much of it sampling alone explains."""
    if reference is None:
        return []
    ranked = sorted(features, key=lambda f: -importance.get(f, 0.0)) if importance else features
    rows = []
    for name in [f for f in ranked if f in current and f in reference][:top]:
        cur = pd.to_numeric(current[name], errors="coerce").to_numpy(dtype=float)
        ref = pd.to_numeric(reference[name], errors="coerce").to_numpy(dtype=float)
        result = psi(ref, cur)
        rows.append(
            {
                "feature": name,
                "psi": result.psi,
                "noise": result.noise,
                "within_noise": result.within_noise,
                "importance": importance.get(name),
            }
        )
    return sorted(rows, key=lambda r: -(r["psi"] or 0.0))


def _thresholds(settings: DQSettings, overrides: dict[str, Any] | None) -> Thresholds:
    return Thresholds.merged(
        Thresholds(settings.psi_warn, settings.psi_alert, settings.auc_warn, settings.auc_alert),
        {k: v for k, v in (overrides or {}).items() if k != "gate"},
    )


def check_model(
    m: ModelScores,
    *,
    current: pa.Table,
    reference: tuple[dt.date, Path, pa.Table | None] | None,
    settings: DQSettings,
    method: str = "holdout",
    origins: dict[str, str] | None = None,
) -> QualityResult:
    """DQ of one model from the batch's samples: (reference date, partition, sample) or None.

    A reference sample of None means the reference day has no feature slice: the classifier
    then sees the score alone, on both sides. origins: where each side's sample came from, in
    words, for the record.
    """
    started = time.perf_counter()
    key = m.entity_key
    cur_scores = _read_scores(m.current_part, key)
    cur_frame = ref_frame = ref_values = None
    ref_date = None
    if reference is not None:
        ref_date, ref_part, ref_sample = reference
        ref_scores = _read_scores(ref_part, key)
        ref_values = ref_scores.column("score").to_numpy(zero_copy_only=False)
        if ref_sample is not None:
            cur_frame = with_scores(current, cur_scores, key, m.features)
            ref_frame = with_scores(ref_sample, ref_scores, key, m.features)
        else:  # no features of that day: the score alone, sampled by the same key rule
            cur_frame = with_scores(current, cur_scores, key, [])
            own = KeySample(key, ["score"], settings.av_max_rows)
            own.add(ref_scores)
            ref_frame = own.table().select(["score"]).to_pandas()
    report = evaluate(
        cur_frame if cur_frame is not None else pd.DataFrame({"score": []}),
        ref_frame,
        features=[c for c in cur_frame.columns if c != "score"] if cur_frame is not None else [],
        thresholds=(thresholds := _thresholds(settings, m.overrides)),
        is_probability=m.is_probability,
        slice_rows=m.slice_rows,
        av_max_rows=settings.av_max_rows,
        current_scores=cur_scores.column("score").to_numpy(zero_copy_only=False),
        reference_scores=ref_values,
        method=method,
    )
    drift = (
        feature_drift(
            cur_frame, ref_frame, m.features, m.importance or {}, settings.feature_psi_top
        )
        if cur_frame is not None
        else []
    )
    moved = [
        d
        for d in drift
        if d["psi"] is not None and not d["within_noise"] and d["psi"] >= thresholds.psi_alert
    ]
    reason = report.reason
    if moved:
        listed = ", ".join(f"{d['feature']} (PSI {d['psi']:.2f})" for d in moved[:5])
        reason = f"{reason}; feature drift: {listed}"
    details = {**report.details, "feature_psi": drift}
    if origins and reference is not None:
        details["samples"] = origins
    report = dataclasses.replace(report, reason=reason, details=details)
    return QualityResult(report, ref_date, time.perf_counter() - started)


def check_batch(
    source: FeatureSource,
    scores_root: str | Path,
    *,
    day: dt.date,
    slice_date: dt.date,
    models: Sequence[ModelScores],
    settings: DQSettings,
    current: dict[str, pa.Table] | None = None,
    method: str = "holdout",
    sampler: Sampler = sample_slice,
    workers: int | None = None,
    store: SampleStore | None = None,
) -> BatchQuality:
    """DQ of every model of a batch, reading each feature slice at most once.

    current: the current slice's samples by entity key, as collected during the scoring read
    (see current_samples); a key missing there is sampled here by one read of the slice.
    store: where reference samples are looked up before a slice is read, and where the current
    slice's samples are kept for the next day's DQ.
    workers: models evaluated at once (default [dq] threads).
    """
    out = BatchQuality()
    references: dict[int, tuple[dt.date, Path] | None] = {
        m.model_run_id: previous_partition(scores_root, day, m.model_id) for m in models
    }
    ref_slices: dict[dt.date, dt.date | None] = {}
    for ref in references.values():
        if ref is not None and ref[0] not in ref_slices:
            found = source.slice_for(ref[0])
            ref_slices[ref[0]] = found.date if found is not None else None
    # Which columns each (slice, key) sample needs: the union of its models' features.
    wanted: dict[tuple[dt.date, str], list[str]] = defaultdict(list)
    for m in models:
        ref = references[m.model_run_id]
        if ref is None:
            continue
        ref_slice = ref_slices[ref[0]]
        wanted[(slice_date, m.entity_key)].extend(m.features if ref_slice else [])
        if ref_slice is not None:
            wanted[(ref_slice, m.entity_key)].extend(m.features)
    samples: dict[tuple[dt.date, str], pa.Table | Exception] = {}
    origin: dict[tuple[dt.date, str], str] = {}
    for key, table in (current or {}).items():  # drawn during the scoring read
        if set(wanted.get((slice_date, key), [])) <= set(table.column_names):
            samples[(slice_date, key)] = table
            origin[(slice_date, key)] = "drawn during the scoring read"
            wanted.pop((slice_date, key), None)
    started = time.perf_counter()
    for (when, key), columns in wanted.items():
        columns = list(dict.fromkeys(columns))
        stored = None
        if store is not None and when != slice_date:
            stored = store.load(when, key, columns, settings.av_max_rows)
        if stored is not None:
            samples[(when, key)] = stored
            origin[(when, key)] = f"kept when the {when} slice was scored"
            out.slices_stored.append(when)
            continue
        try:
            samples[(when, key)] = sampler(source, when, key, columns, settings.av_max_rows)
        except Exception as exc:  # every model that needs this sample fails its DQ alone
            log.exception("DQ sample of the %s slice failed", when, extra={"date": str(when)})
            samples[(when, key)] = exc
        origin[(when, key)] = f"drawn by reading the {when} slice"
        out.slices_read.append(when)
    if store is not None:
        _keep(store, slice_date, samples, current or {}, settings.av_max_rows)
    out.sample_seconds = time.perf_counter() - started

    def one(m: ModelScores) -> QualityResult | Exception:
        extra = {"model_run_id": m.model_run_id, "model_id": m.model_id, "date": day.isoformat()}
        try:
            ref = references[m.model_run_id]
            reference = None
            current_sample = pa.table({})
            origins: dict[str, str] = {}
            if ref is not None:
                current_sample = _ready(samples[(slice_date, m.entity_key)])
                origins["current"] = origin[(slice_date, m.entity_key)]
                ref_slice = ref_slices[ref[0]]
                ref_sample = None
                if ref_slice is not None:
                    ref_sample = _ready(samples[(ref_slice, m.entity_key)])
                    origins["reference"] = origin[(ref_slice, m.entity_key)]
                reference = (ref[0], ref[1], ref_sample)
            result = check_model(
                m,
                current=current_sample,
                reference=reference,
                settings=settings,
                method=method,
                origins=origins,
            )
            log.info("DQ %s in %.2f s", result.report.status, result.seconds, extra=extra)
            return result
        except Exception as exc:  # DQ must never lose the scores that were written
            log.exception("DQ failed", extra=extra)
            return exc

    # Models in parallel threads, each classifier on one OpenMP thread: the heavy parts (binning,
    # histograms, sorting, Parquet) release the GIL. The limit is set once around the pool, not
    # per model: overlapping per-call limits would restore each other's thread counts.
    workers = settings.threads if workers is None else workers
    with threadpool_limits(limits=1, user_api="openmp"):
        if workers > 1 and len(models) > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dq") as pool:
                done = list(pool.map(one, models))
        else:
            done = [one(m) for m in models]
    out.results = {m.model_run_id: r for m, r in zip(models, done, strict=True)}
    log.info(
        "DQ of %d model(s): samples of %d slice read(s) and %d kept one(s) in %.2f s",
        len(models),
        len(out.slices_read),
        len(out.slices_stored),
        out.sample_seconds,
        extra={"date": day.isoformat()},
    )
    return out


def _keep(
    store: SampleStore,
    slice_date: dt.date,
    samples: dict[tuple[dt.date, str], pa.Table | Exception],
    current: dict[str, pa.Table],
    max_rows: int,
) -> None:
    """Store the current slice's samples for the next day's DQ (a failure costs only a read)."""
    kept = {key: t for (when, key), t in samples.items() if when == slice_date} | current
    for key, table in kept.items():
        if isinstance(table, Exception):
            continue
        try:
            store.save(slice_date, key, table, max_rows)
        except Exception:
            log.warning("DQ sample of the %s slice not kept", slice_date, exc_info=True)


def _ready(sample: pa.Table | Exception) -> pa.Table:
    """The sample, or the error that stopped it, raised for this model."""
    if isinstance(sample, Exception):
        raise sample
    return sample
