"""Model object contract, version 1: check a loaded dict and report every problem at once.

Runs wherever the object is loaded: in the validation child process and in a notebook
(save_model). Never in the daemon process.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mldropd.errors import FieldError
from mldropd.scheduling.schedules import ScheduleError, parse_schedule
from mldropd.text import with_article

CONTRACT_VERSION = 1
# Both are matched whole (fullmatch): `$` would also accept a trailing newline.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# ASCII only: a look-alike letter (Cyrillic 'о' for 'o') would be another user. The local part
# is RFC 5322's atext without '/', the domain dot-separated labels of letters, digits and '-'.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_RE = re.compile(
    rf"[A-Za-z0-9!#$%&'*+=?^_`{{|}}~-]+(?:\.[A-Za-z0-9!#$%&'*+=?^_`{{|}}~-]+)*@{_LABEL}(?:\.{_LABEL})*"
)
INPUT_KINDS = ("pandas", "numpy", "polars")
ENGINES = ("auto", "local", "spark")
DQ_KEYS = ("psi_warn", "psi_alert", "auc_warn", "auc_alert")
KNOWN_KEYS = (
    "pipeline",
    "features",
    "name",
    "owner_email",
    "schedule",
    "output",
    "input",
    "entity_key",
    "params",
    "dq",
    "meta",
)


@dataclass
class ContractSummary:
    """What the daemon keeps of a valid model object (JSON-serialisable, no model code)."""

    features: list[str]
    output: str  # "proba", "proba:<k>" or "predict"
    input: str
    call: str  # how the pipeline is called: predict_proba | predict | callable
    pipeline_type: str
    name: str | None = None
    owner_email: str | None = None
    schedule: str | None = None
    entity_key: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    dq: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)
    contract_version: int = CONTRACT_VERSION

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_probability(self) -> bool:
        return self.output.startswith("proba")


def check_name(name: Any, field_name: str = "name") -> list[FieldError]:
    """Problems with a model name (empty list when it is valid)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return [
            FieldError(
                field_name,
                f"`name` {name!r} is not valid: use 1-64 characters of "
                "a-z, 0-9, '_' and '-', starting with a letter or digit",
            )
        ]
    return []


def check_email(email: Any, field_name: str = "owner_email") -> list[FieldError]:
    """Problems with a report address."""
    if not isinstance(email, str) or len(email) > 254 or not EMAIL_RE.fullmatch(email):
        return [
            FieldError(
                field_name,
                f"{email!r} is not an email address: use name@domain in ASCII letters, digits "
                "and . _ + - (no spaces, slashes or control characters)",
            )
        ]
    return []


def check_schedule(text: Any, field_name: str = "schedule") -> list[FieldError]:
    """Problems with a schedule string."""
    if not isinstance(text, str):
        return [FieldError(field_name, "`schedule` must be a string such as 'daily'")]
    try:
        parse_schedule(text)
    except ScheduleError as exc:
        return [FieldError(field_name, str(exc))]
    return []


def _call_kind(pipeline: Any) -> str | None:
    if callable(getattr(pipeline, "predict_proba", None)):
        return "predict_proba"
    if callable(getattr(pipeline, "predict", None)):
        return "predict"
    if callable(pipeline):
        return "callable"
    return None


def _check_output(output: Any, call: str | None) -> tuple[str, list[FieldError]]:
    default = "proba" if call == "predict_proba" else "predict"
    if output is None:
        return default, []
    bad = FieldError(
        "output",
        f"`output` {output!r} is not valid: use 'proba', 'predict' or "
        "'proba:<k>' (column k of predict_proba)",
    )
    if not isinstance(output, str):
        return default, [bad]
    if output == "predict":
        return output, []
    if output == "proba" or re.fullmatch(r"proba:\d+", output):
        if call not in (None, "predict_proba"):
            return default, [
                FieldError(
                    "output",
                    f"`output` is {output!r} but the pipeline has no predict_proba; use 'predict'",
                )
            ]
        return output, []
    return default, [bad]


def _check_params(params: Any) -> list[FieldError]:
    if not isinstance(params, dict):
        return [FieldError("params", "`params` must be a dict")]
    problems = []
    for key in ("batch_size", "timeout_s"):
        value = params.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value <= 0
        ):
            problems.append(
                FieldError(
                    f"params.{key}",
                    f"`params.{key}` must be a positive whole number, got {value!r}",
                )
            )
    engine = params.get("engine")
    if engine is not None and engine not in ENGINES:
        problems.append(
            FieldError(
                "params.engine", f"`params.engine` {engine!r} is not one of {', '.join(ENGINES)}"
            )
        )
    return problems


def check_dq(dq: Any) -> list[FieldError]:
    if not isinstance(dq, dict):
        return [FieldError("dq", "`dq` must be a dict of thresholds")]
    problems = [
        FieldError(f"dq.{key}", f"`dq.{key}` must be a number, got {dq[key]!r}")
        for key in DQ_KEYS
        if dq.get(key) is not None
        and (isinstance(dq[key], bool) or not isinstance(dq[key], int | float))
    ]
    if dq.get("gate") not in (None, "off", "alert"):
        problems.append(FieldError("dq.gate", f"`dq.gate` {dq['gate']!r} must be 'off' or 'alert'"))
    for metric in ("psi", "auc"):
        warn, alert = dq.get(f"{metric}_warn"), dq.get(f"{metric}_alert")
        if not problems and warn is not None and alert is not None and warn > alert:
            problems.append(
                FieldError(
                    f"dq.{metric}_warn",
                    (f"`dq.{metric}_warn` ({warn}) is above `dq.{metric}_alert` ({alert})"),
                )
            )
    return problems


def _check_features(features: Any) -> list[FieldError]:
    if features is None:
        return [
            FieldError(
                "features",
                "`features` is missing: add the list of input columns, "
                "in the order the pipeline expects",
            )
        ]
    if not isinstance(features, list | tuple) or not features:
        return [FieldError("features", "`features` must be a non-empty list of column names")]
    bad = [f for f in features if not isinstance(f, str) or not f]
    if bad:
        return [
            FieldError(
                "features", f"`features` must hold only column names (strings); found {bad[:5]!r}"
            )
        ]
    dupes = sorted({f for f in features if list(features).count(f) > 1})
    if dupes:
        return [FieldError("features", f"`features` lists {', '.join(dupes)} more than once")]
    return []


def feature_importance(pipeline: Any, features: list[str]) -> dict[str, float]:
    """Importance per feature from feature_importances_ or coef_, when the pipeline exposes them."""
    import numpy as np

    estimator = pipeline
    steps = getattr(pipeline, "steps", None)
    if steps:  # a scikit-learn Pipeline: the last step is the predictor
        estimator = steps[-1][1]
    values = getattr(estimator, "feature_importances_", None)
    if values is None:
        coef = getattr(estimator, "coef_", None)
        if coef is not None:
            values = np.abs(np.atleast_2d(np.asarray(coef, dtype=float))).sum(axis=0)
    if values is None:
        return {}
    try:
        values = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        return {}
    if len(values) != len(features) or not np.isfinite(values).all():
        return {}
    return {name: float(v) for name, v in zip(features, values, strict=True)}


def check_model_object(obj: Any) -> tuple[ContractSummary | None, list[FieldError]]:
    """Check a loaded model object against contract v1; return its summary and every problem."""
    if not isinstance(obj, dict):
        return None, [
            FieldError(
                "file",
                f"the file holds {with_article(type(obj).__name__)}, not a model "
                "object (a dict with at least 'pipeline' and 'features')",
            )
        ]
    problems: list[FieldError] = []
    pipeline = obj.get("pipeline")
    call = None
    if pipeline is None:
        problems.append(
            FieldError(
                "pipeline",
                "`pipeline` is missing: add the fitted model or pipeline under the key 'pipeline'",
            )
        )
    else:
        call = _call_kind(pipeline)
        if call is None:
            problems.append(
                FieldError(
                    "pipeline",
                    f"`pipeline` is {with_article(type(pipeline).__name__)}, "
                    "which has no predict_proba or predict and is not callable",
                )
            )
    problems += _check_features(obj.get("features"))
    output, output_problems = _check_output(obj.get("output"), call)
    problems += output_problems
    input_kind = obj.get("input", "pandas")
    if input_kind not in INPUT_KINDS:
        problems.append(
            FieldError("input", f"`input` {input_kind!r} is not one of {', '.join(INPUT_KINDS)}")
        )
    for key, check in (
        ("name", check_name),
        ("owner_email", check_email),
        ("schedule", check_schedule),
    ):
        if obj.get(key) is not None:
            problems += check(obj[key], key)
    entity_key = obj.get("entity_key")
    if entity_key is not None and (not isinstance(entity_key, str) or not entity_key):
        problems.append(FieldError("entity_key", "`entity_key` must be a column name"))
    params = obj.get("params", {}) or {}
    problems += _check_params(params)
    dq = obj.get("dq", {}) or {}
    problems += check_dq(dq)
    meta = obj.get("meta", {}) or {}
    if not isinstance(meta, dict):
        problems.append(FieldError("meta", "`meta` must be a dict"))
    if problems:
        return None, problems
    features = list(obj["features"])
    summary = ContractSummary(
        features=features,
        output=output,
        input=input_kind,
        call=call or "callable",
        pipeline_type=f"{type(pipeline).__module__}.{type(pipeline).__qualname__}",
        name=obj.get("name"),
        owner_email=obj.get("owner_email"),
        schedule=parse_schedule(obj["schedule"]).text if obj.get("schedule") else None,
        entity_key=entity_key,
        params={k: params[k] for k in ("batch_size", "engine", "timeout_s") if k in params},
        dq={
            **{k: float(dq[k]) for k in DQ_KEYS if k in dq},
            **({"gate": dq["gate"]} if dq.get("gate") else {}),
        },
        meta=_jsonable(meta),
        importance=feature_importance(pipeline, features),
        ignored_keys=sorted(str(k) for k in obj if k not in KNOWN_KEYS),
    )
    return summary, []


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of free-form metadata (unknown types become their repr)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


# -- the trusted side: a summary reported by the sandbox, checked again ------------------------
CALLS = ("predict_proba", "predict", "callable")
_MAX_FEATURES, _MAX_NAME_CHARS, _MAX_META_BYTES = 10_000, 256, 64 * 1024
_PIPELINE_TYPE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.<>]{0,299}")


def summary_from_sandbox(data: Any) -> tuple[ContractSummary | None, list[FieldError]]:
    """Rebuild a ContractSummary from what a validation sandbox sent, checking every field as
    if nothing had been checked before: the sandbox runs the model's code and may lie. Only
    known fields of known types survive; anything else is a problem, never stored."""
    import json
    import math

    if not isinstance(data, dict):
        return None, [FieldError("file", "the model's sandbox sent no contract summary")]
    problems = _check_features(data.get("features"))
    features = data.get("features") if not problems else []
    assert isinstance(features, list)
    if len(features) > _MAX_FEATURES or any(len(f) > _MAX_NAME_CHARS for f in features):
        problems.append(FieldError("features", "`features` lists too many or too long names"))
    call = data.get("call")
    if call not in CALLS:
        problems.append(FieldError("pipeline", f"the sandbox reported the call {call!r}"))
        call = None
    output, output_problems = _check_output(data.get("output"), call)
    problems += output_problems
    if data.get("input") not in INPUT_KINDS:
        problems.append(FieldError("input", f"`input` {data.get('input')!r} is not valid"))
    pipeline_type = data.get("pipeline_type")
    if not isinstance(pipeline_type, str) or not _PIPELINE_TYPE_RE.fullmatch(pipeline_type):
        problems.append(FieldError("pipeline", "the sandbox reported an invalid pipeline type"))
    for key, check in (
        ("name", check_name),
        ("owner_email", check_email),
        ("schedule", check_schedule),
    ):
        if data.get(key) is not None:
            problems += check(data[key], key)
    entity_key = data.get("entity_key")
    if entity_key is not None and (
        not isinstance(entity_key, str) or not entity_key or len(entity_key) > _MAX_NAME_CHARS
    ):
        problems.append(FieldError("entity_key", "`entity_key` must be a column name"))
    params = data.get("params") or {}
    problems += _check_params(params)
    if isinstance(params, dict) and set(params) - {"batch_size", "engine", "timeout_s"}:
        problems.append(FieldError("params", "`params` holds keys mldropd does not know"))
    dq = data.get("dq") or {}
    problems += check_dq(dq)
    if isinstance(dq, dict) and set(dq) - {*DQ_KEYS, "gate"}:
        problems.append(FieldError("dq", "`dq` holds keys mldropd does not know"))
    meta = data.get("meta") or {}
    try:
        too_big = len(json.dumps(meta)) > _MAX_META_BYTES
    except (TypeError, ValueError):
        too_big = True
    if not isinstance(meta, dict) or too_big:
        problems.append(FieldError("meta", "`meta` must be a small dict of plain values (64 KB)"))
    importance = data.get("importance") or {}
    if not isinstance(importance, dict) or not all(
        k in features
        and isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        for k, v in importance.items()
    ):
        problems.append(FieldError("pipeline", "the sandbox reported invalid feature importance"))
    ignored = data.get("ignored_keys") or []
    if (
        not isinstance(ignored, list)
        or len(ignored) > 100
        or not all(isinstance(k, str) and len(k) <= 100 for k in ignored)
    ):
        problems.append(FieldError("file", "the sandbox reported invalid ignored keys"))
    if data.get("contract_version") != CONTRACT_VERSION:
        problems.append(FieldError("file", "the sandbox reported another contract version"))
    if problems:
        return None, problems
    assert isinstance(call, str) and isinstance(pipeline_type, str)
    return ContractSummary(
        features=list(features),
        output=output,
        input=str(data["input"]),
        call=call,
        pipeline_type=pipeline_type,
        name=data.get("name"),
        owner_email=data.get("owner_email"),
        schedule=parse_schedule(data["schedule"]).text if data.get("schedule") else None,
        entity_key=entity_key,
        params={k: params[k] for k in ("batch_size", "engine", "timeout_s") if k in params},
        dq={
            **{k: float(dq[k]) for k in DQ_KEYS if k in dq},
            **({"gate": dq["gate"]} if dq.get("gate") else {}),
        },
        meta=_jsonable(meta),
        importance={str(k): float(v) for k, v in importance.items()},
        ignored_keys=list(ignored),
    ), []
