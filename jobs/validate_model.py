"""Child process: load an uploaded model file, check the contract, dry-run it on real features.

Started by the daemon (mldropd.inspect) inside the sandbox; writes one JSON result file.
Usage: python -m mldropd.jobs.validate_model REQUEST.json RESULT.json
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from mldropd import sandbox


def load_model_file(path: str, caught: list[str] | None = None) -> tuple[Any, list[dict[str, str]]]:
    """Unpickle with dill; turn the usual failures into advice a data scientist can follow.
    Version warnings the libraries raise while unpickling are added to `caught`."""
    import dill

    from mldropd.libversions import unpickling_warnings

    try:
        with open(path, "rb") as f, unpickling_warnings() as said:
            obj = dill.load(f)
        (caught if caught is not None else []).extend(said)
        return obj, []
    except ModuleNotFoundError as exc:
        return None, [
            {
                "field": "file",
                "message": (
                    f"the model needs the module '{exc.name}', which is not installed where "
                    "models run. Functions from your own modules are stored by reference: "
                    "define them in the notebook and save with dill.dump(obj, f, recurse=True), "
                    "or ask an admin to install the package."
                ),
            }
        ]
    except NameError as exc:
        return None, [
            {
                "field": "file",
                "message": (
                    f"loading the model failed with NameError ({exc}): a function uses a "
                    "notebook global that was not saved. Save with "
                    "dill.dump(obj, f, recurse=True)."
                ),
            }
        ]
    except (EOFError, ValueError, IndexError) as exc:
        return None, [
            {
                "field": "file",
                "message": (
                    f"the file is truncated or corrupt ({type(exc).__name__}: {exc}); save it again"
                ),
            }
        ]
    except MemoryError:
        return None, [{"field": "file", "message": "loading the model ran out of memory"}]
    except Exception as exc:  # any other failure of user code during load
        return None, [
            {"field": "file", "message": (f"loading the model failed: {type(exc).__name__}: {exc}")}
        ]


def validate(request: dict[str, Any]) -> dict[str, Any]:
    """Every check of an upload; never raises for a problem of the model."""
    import numpy as np

    from mldropd import libversions
    from mldropd.contract import check_model_object
    from mldropd.features import FeatureSource, FeatureSourceError
    from mldropd.modelcall import (
        ModelOutputError,
        check_scores,
        describe_model_error,
        predict,
        to_input,
    )
    from mldropd.settings import FeatureSettings

    caught: list[str] = []
    obj, errors = load_model_file(request["model_path"], caught)
    if errors:
        return {"ok": False, "errors": errors}
    version_warnings = libversions.check(obj, caught)
    summary, problems = check_model_object(obj)
    if summary is None:
        return {"ok": False, "errors": [p.as_dict() for p in problems]}

    source = FeatureSource(FeatureSettings(**request["features"]))
    entity_key = summary.entity_key or source.settings.entity_key
    try:
        day = source.latest()
        if day is None:
            return {
                "ok": False,
                "errors": [
                    {
                        "field": "features",
                        "message": (
                            "the feature store has no slice yet, so the model cannot be checked; "
                            "load feature data first"
                        ),
                    }
                ],
            }
        available = set(source.columns(day))
    except (FeatureSourceError, Exception) as exc:
        return {
            "ok": False,
            "errors": [
                {"field": "features", "message": (f"the feature store cannot be read: {exc}")}
            ],
        }
    missing = [f for f in summary.features if f not in available]
    errors = [
        {
            "field": "features",
            "message": (
                f"`features` lists `{name}`, which the feature store does not have (slice {day})"
            ),
        }
        for name in missing
    ]
    if entity_key not in available:
        errors.append(
            {
                "field": "entity_key",
                "message": (f"the entity key `{entity_key}` is not a column of the feature store"),
            }
        )
    if errors:
        return {"ok": False, "errors": errors}

    sample = source.read(day, summary.features, limit=int(request.get("sample_rows", 1000)))
    started = time.perf_counter()
    try:
        scores = predict(
            obj["pipeline"],
            to_input(sample, summary.features, summary.input),
            summary.call,
            summary.output,
        )
        check_scores(scores, sample.num_rows)
    except ModelOutputError as exc:
        return {
            "ok": False,
            "errors": [
                {
                    "field": "pipeline",
                    "message": (f"dry run on {sample.num_rows} rows of {day}: {exc}"),
                }
            ],
        }
    except Exception as exc:
        tail = traceback.format_exc(limit=-3)
        return {
            "ok": False,
            "errors": [
                {
                    "field": "pipeline",
                    "message": (
                        f"dry run on {sample.num_rows} rows of {day} raised "
                        f"{describe_model_error(exc)}"
                    ),
                }
            ],
            "traceback": tail,
            "warnings": version_warnings,
        }
    seconds = time.perf_counter() - started
    counts, edges = np.histogram(scores, bins=20)
    return {
        "ok": True,
        "errors": [],
        "warnings": version_warnings,
        "summary": summary.as_dict(),
        "dry_run": {
            "slice_date": day.isoformat(),
            "rows": int(sample.num_rows),
            "seconds": round(seconds, 4),
            "rows_per_s": round(sample.num_rows / seconds) if seconds > 0 else None,
            "min": float(scores.min()),
            "mean": float(scores.mean()),
            "max": float(scores.max()),
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        },
    }


def main(argv: list[str]) -> int:
    sandbox.apply_limits()
    request_path, result_path = Path(argv[0]), Path(argv[1])
    request = json.loads(request_path.read_text())
    try:
        result = validate(request)
    except MemoryError:
        result = {
            "ok": False,
            "errors": [
                {"field": "pipeline", "message": ("the model ran out of memory during validation")}
            ],
        }
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
