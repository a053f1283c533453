"""save_model(): the notebook helper that builds a model object, checks it, and saves it right."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def save_model(
    path: str | os.PathLike[str],
    *,
    pipeline: Any,
    features: list[str],
    name: str | None = None,
    email: str | None = None,
    schedule: str | None = None,
    output: str | None = None,
    input: str | None = None,
    entity_key: str | None = None,
    params: dict[str, Any] | None = None,
    dq: dict[str, float] | None = None,
    meta: dict[str, Any] | None = None,
    sample: Any = None,
) -> Path:
    """Check a model object against contract v1 and save it with dill (recurse=True).

    `sample` (a DataFrame with the feature columns) adds a dry run: the pipeline must return
    one finite score per row, exactly as mldropd will call it. Raises ValueError listing every
    problem; nothing is written then.
    """
    import dill
    import numpy as np

    from mldropd.contract import check_model_object
    from mldropd.libversions import META_KEY, versions_of
    from mldropd.modelcall import check_scores, predict

    # The libraries the pipeline is built from, checked against the sandbox's at upload.
    meta = {META_KEY: versions_of(pipeline), **(meta or {})}
    obj: dict[str, Any] = {"pipeline": pipeline, "features": list(features)}
    optional = {
        "name": name,
        "owner_email": email,
        "schedule": schedule,
        "output": output,
        "input": input,
        "entity_key": entity_key,
        "params": params,
        "dq": dq,
        "meta": meta,
    }
    obj.update({k: v for k, v in optional.items() if v is not None})
    summary, problems = check_model_object(obj)
    if summary is None:
        raise ValueError(
            "the model object is not valid:\n"
            + "\n".join(f"- {p.field}: {p.message}" for p in problems)
        )
    if sample is not None:
        columns = set(getattr(sample, "columns", []))
        lacking = [f for f in summary.features if f not in columns]
        if lacking:
            raise ValueError(
                "the model object is not valid:\n- sample: the sample lacks "
                f"{', '.join(lacking)}, which `features` lists; pass a DataFrame with every "
                "feature column (the rows mldropd will score look like it)"
            )
        frame = sample[summary.features]
        if summary.input == "numpy":
            frame = np.asarray(frame, dtype=np.float64)
        elif summary.input == "polars":
            import polars as pl

            frame = pl.from_pandas(frame)
        scores = predict(pipeline, frame, summary.call, summary.output)
        check_scores(scores, len(sample))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        # recurse=True: functions defined in the notebook carry the globals they use.
        dill.dump(obj, f, recurse=True)
    tmp.replace(target)
    return target
