"""Validate an upload in the sandbox: the model host loads it and reports its contract; this
(trusted) side checks that report again, checks the features against the store, reads the
sample rows itself and sends them for the dry run, and judges the scores that come back.

The host sees the model bytes and the sample rows of the model's own features, nothing more;
the whole conversation runs on this side's clock ([engine] validate_timeout_s).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mldropd.contract import summary_from_sandbox
from mldropd.errors import FieldError
from mldropd.settings import Settings

log = logging.getLogger(__name__)

_MAX_ERRORS = 50


@dataclass
class Validation:
    """What the sandbox run established about a model file."""

    errors: list[FieldError] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    dry_run: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def validate_in_sandbox(path: Path, settings: Settings, sandboxes: Any = None) -> Validation:
    """Load, check and dry-run the model in a sandboxed model host; never raises for the
    model's problems. sandboxes: the daemon's (else a fork server is started for this call)."""
    from mldropd.sandbox.setup import Sandboxes

    own = sandboxes is None
    sb: Sandboxes = Sandboxes.start(settings) if own else sandboxes
    try:
        return _validate(path, settings, sb)
    finally:
        if own:
            sb.stop()


def _validate(path: Path, settings: Settings, sandboxes: Any) -> Validation:
    from mldropd.sandbox.hosts import ModelHost

    cfg = settings.engine
    limit = float(cfg.validate_timeout_s)
    started = time.monotonic()
    sandboxes.ready()
    policy = sandboxes.policy(memory_mb=cfg.model_memory_mb, cpu_s=int(limit * 2) + 10)
    host = ModelHost(sandboxes.server, policy, "validate")
    host.start()
    try:
        reply = host.load(0, {"contract": True}, path.read_bytes(), limit)
        if reply.kind != "loaded":
            return Validation(errors=[FieldError("file", _failure(reply, limit))])
        result = _contract(reply.value)
        if result.errors or result.summary is None:
            return result
        _dry_run(host, settings, result, limit, limit - (time.monotonic() - started))
        return result
    finally:
        how = host.close()
        log.debug("validation sandbox ended: %s", how)


def _contract(info: dict[str, Any]) -> Validation:
    """The host's report, believed only as far as it checks."""
    warnings = [str(w)[:500] for w in info.get("warnings") or [] if isinstance(w, str)][:20]
    if info.get("ok") is not True:
        raw = info.get("errors")
        if not isinstance(raw, list) or not raw:
            return Validation(errors=[FieldError("file", "the model's sandbox sent no verdict")])
        errors = [
            FieldError(str(e.get("field", "file"))[:64], str(e.get("message", ""))[:1000])
            for e in raw[:_MAX_ERRORS]
            if isinstance(e, dict)
        ]
        return Validation(errors=errors or [FieldError("file", "the model object is not valid")])
    summary, problems = summary_from_sandbox(info.get("summary"))
    if summary is None:
        return Validation(errors=problems)
    return Validation(summary=summary.as_dict(), warnings=warnings)


def _dry_run(
    host: Any, settings: Settings, result: Validation, limit: float, remaining: float
) -> None:
    """Check the features against the store, then score sample rows read here."""
    import numpy as np

    from mldropd.features import FeatureSource
    from mldropd.modelcall import ModelOutputError, check_scores

    assert result.summary is not None
    features: list[str] = result.summary["features"]
    source = FeatureSource(settings.features)
    entity_key = result.summary.get("entity_key") or settings.features.entity_key
    try:
        day = source.latest()
        available = set(source.columns(day)) if day is not None else set()
    except Exception as exc:
        result.errors.append(FieldError("features", f"the feature store cannot be read: {exc}"))
        return
    if day is None:
        result.errors.append(
            FieldError(
                "features",
                "the feature store has no slice yet, so the "
                "model cannot be checked; load feature data first",
            )
        )
        return
    result.errors += [
        FieldError(
            "features",
            f"`features` lists `{name}`, which the feature store does not have (slice {day})",
        )
        for name in features
        if name not in available
    ]
    if entity_key not in available:
        result.errors.append(
            FieldError(
                "entity_key", f"the entity key `{entity_key}` is not a column of the feature store"
            )
        )
    if result.errors:
        return
    sample = source.read(day, features, limit=settings.engine.validate_sample_rows)
    batch = sample.combine_chunks().to_batches()[0] if sample.num_rows else None
    if batch is None:
        result.errors.append(FieldError("features", f"the slice {day} has no rows to dry-run"))
        return
    sent = time.monotonic()
    broken = host.send_batch([0], batch)
    reply = broken or host.reply(0, batch.num_rows, sent, remaining)
    where = f"dry run on {batch.num_rows} rows of {day}"
    if reply.kind != "scores":
        result.errors.append(FieldError("pipeline", f"{where}: {_failure(reply, limit)}"))
        return
    scores = reply.value
    try:
        check_scores(scores, batch.num_rows)
    except ModelOutputError as exc:
        result.errors.append(FieldError("pipeline", f"{where}: {exc}"))
        return
    counts, edges = np.histogram(scores, bins=20)
    result.dry_run = {
        "slice_date": day.isoformat(),
        "rows": int(batch.num_rows),
        "seconds": round(reply.seconds, 4),
        "rows_per_s": round(batch.num_rows / reply.seconds) if reply.seconds > 0 else None,
        "min": float(scores.min()),
        "mean": float(scores.mean()),
        "max": float(scores.max()),
        "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
    }


def _failure(reply: Any, limit: float) -> str:
    if reply.kind == "error":
        return str(reply.value)
    if reply.kind == "timeout":
        return (
            f"validating the model took longer than {limit:.0f} s ([engine] "
            "validate_timeout_s) and was stopped"
        )
    if reply.kind == "violation":
        return f"the model's sandbox broke the protocol ({reply.value}) and was stopped"
    return (
        f"validating the model failed: {reply.value}. A model must load and score its "
        "sample within the time and memory limits ([engine] validate_timeout_s, "
        "model_memory_mb)"
    )
