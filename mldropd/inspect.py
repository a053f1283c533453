"""Inspect an uploaded file: static scan of its imports (no code runs), then validation in a
sandboxed child (jobs/validate_model.py) that loads it, checks the contract and dry-runs it."""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mldropd import sandbox
from mldropd.errors import FieldError
from mldropd.pickle_scan import scan_pickle
from mldropd.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """Everything learnt about a model file, and every problem found."""

    errors: list[FieldError] = field(default_factory=list)
    scan: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    dry_run: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # e.g. saved with other library versions

    @property
    def ok(self) -> bool:
        return not self.errors and self.summary is not None


FUNCTIONS_NOTE = "contains serialized Python functions (lambdas or notebook functions)"


def scan_notes(scan: dict[str, Any]) -> list[str]:
    """What the uploader should know about a file's imports, in plain words."""
    notes = [FUNCTIONS_NOTE] if scan.get("has_functions") else []
    if scan.get("allowed"):
        notes.append("imports allowed for you by an admin: " + ", ".join(scan["allowed"]))
    return notes


def scan_file(
    path: Path, allowed: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[FieldError]]:
    """The static scan, as JSON-able facts and problems; `allowed` names are not refused."""
    if path.stat().st_size == 0:
        return {}, [
            FieldError(
                "file",
                "the file is empty; save the model object with dill.dump(obj, f, recurse=True)",
            )
        ]
    result = scan_pickle(path)
    refused = [name for name in result.refused if name not in allowed]
    facts = {
        "globals": result.globals,
        "refused": refused,
        "allowed": [name for name in result.refused if name in allowed],
        "has_functions": result.has_functions,
        "protocol": result.protocol,
    }
    if result.error:
        return facts, [FieldError("file", result.error)]
    if refused:
        return facts, [
            FieldError(
                "file",
                (
                    f"the file imports {', '.join(refused)}, which can run commands, open "
                    "connections or evaluate code; such models are refused. Remove them from the "
                    "pipeline or ask an admin"
                ),
            )
        ]
    return facts, []


def inspect_file(
    path: Path, settings: Settings, allowed: frozenset[str] = frozenset()
) -> Inspection:
    """Scan, then validate in the sandbox; never loads the file in this process.

    `allowed`: refused globals an admin allowed for the uploader (auth.allowed_globals).
    """
    facts, problems = scan_file(path, allowed)
    inspection = Inspection(errors=problems, scan=facts)
    if problems:
        return inspection
    timeout = settings.engine.validate_timeout_s
    with tempfile.TemporaryDirectory(prefix="mldropd-validate-", dir=_work_dir(settings)) as tmp:
        request_path, result_path = Path(tmp, "request.json"), Path(tmp, "result.json")
        request_path.write_text(
            json.dumps(
                {
                    "model_path": str(path.resolve()),
                    "features": dataclasses.asdict(settings.features),
                    "sample_rows": settings.engine.validate_sample_rows,
                }
            )
        )
        child = sandbox.run(
            sandbox.python_argv("mldropd.jobs.validate_model", str(request_path), str(result_path)),
            timeout_s=timeout,
            memory_mb=settings.engine.model_memory_mb,
            private_dir=Path(tmp, "sandbox"),
        )
        if not result_path.exists():
            how = child.describe(timeout, settings.engine.model_memory_mb)
            log.warning("validation child failed: %s", how)
            inspection.errors.append(
                FieldError(
                    "file",
                    (
                        f"validating the model failed: {how}. A model must load and score "
                        f"{settings.engine.validate_sample_rows} rows within {timeout} s and "
                        f"{settings.engine.model_memory_mb} MB"
                    ),
                )
            )
            return inspection
        result = json.loads(result_path.read_text())
    inspection.errors += [FieldError(e["field"], e["message"]) for e in result["errors"]]
    inspection.summary = result.get("summary")
    inspection.dry_run = result.get("dry_run", {})
    inspection.warnings = result.get("warnings", [])
    return inspection


def _work_dir(settings: Settings) -> str:
    path = Path(settings.server.work_dir)
    path.mkdir(parents=True, exist_ok=True)
    return str(path)
