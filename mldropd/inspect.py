"""Inspect an uploaded file: static scan of its imports (no code runs), then validation in a
sandboxed child (jobs/validate_model.py) that loads it, checks the contract and dry-runs it.

Two steps, called in this order by the upload (mldropd/intake.py, inside a validation slot)
and by `mldropd models check`: `scan_file`, then `validate_file`, the one place that starts
the sandbox."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mldropd.errors import FieldError
from mldropd.scan_process import scan_in_child
from mldropd.settings import Settings
from mldropd.validation import validate_in_sandbox

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """Everything learnt about a model file, and every problem found."""

    errors: list[FieldError] = field(default_factory=list)
    scan: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    dry_run: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and self.summary is not None


EMPTY_FILE = "the file is empty; save the model object with dill.dump(obj, f, recurse=True)"
FUNCTIONS_NOTE = "contains serialized Python functions (lambdas or notebook functions)"


def scan_notes(scan: dict[str, Any]) -> list[str]:
    """What the uploader should know about a file's imports, in plain words."""
    notes = [FUNCTIONS_NOTE] if scan.get("has_functions") else []
    if scan.get("allowed"):
        notes.append("imports allowed for you by an admin: " + ", ".join(scan["allowed"]))
    return notes


def scan_file(
    path: Path, settings: Settings, allowed: frozenset[str] = frozenset()
) -> tuple[dict[str, Any], list[FieldError]]:
    """The static scan, as JSON-able facts and problems; `allowed` names are not refused."""
    if path.stat().st_size == 0:
        return {}, [FieldError("file", EMPTY_FILE)]
    limits = settings.limits
    result = scan_in_child(path, limits.scan_timeout_s, limits.scan_memory_mb)
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
        why = "; ".join(f"{name} {result.reasons.get(name, 'is refused')}" for name in refused)
        return facts, [
            FieldError(
                "file",
                (
                    f"the file imports {', '.join(refused)}, which can run commands, touch "
                    f"files, open connections or evaluate code ({why}); such models are "
                    "refused. Remove them from the pipeline or ask an admin"
                ),
            )
        ]
    return facts, []


def inspect_file(
    path: Path,
    settings: Settings,
    allowed: frozenset[str] = frozenset(),
    sandboxes: Any = None,
) -> Inspection:
    """Scan, then validate in the sandbox; never loads the file in this process.

    `allowed`: refused globals an admin allowed for the uploader (auth.allowed_globals).
    `sandboxes`: the daemon's fork server (None: one is started for this inspection).
    """
    facts, problems = scan_file(path, settings, allowed)
    if problems:
        return Inspection(errors=problems, scan=facts)
    return validate_file(path, settings, facts, sandboxes)


def validate_file(
    path: Path, settings: Settings, scan: dict[str, Any], sandboxes: Any = None
) -> Inspection:
    """Load, check and dry-run the file in the sandbox: the one call site of model code.

    `sandboxes`: the daemon's fork server (None: one is started for this validation)."""
    result = validate_in_sandbox(path, settings, sandboxes)
    return Inspection(
        errors=result.errors,
        scan=scan,
        summary=result.summary if not result.errors else None,
        dry_run=result.dry_run,
        warnings=result.warnings,
    )
