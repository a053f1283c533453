"""Write step: move a model's staged scores into the scores table, replacing the old partition.

Readers see the old partition or the new one, never half of one and never both: the new files
are complete before a rename swaps directories, and a crash between the two renames is
repaired by recover() (the old partition comes back until the model is scored again).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import uuid
from pathlib import Path

from mldropd.faults import fault_point

_TRASH_RE = re.compile(r"^trash-dt=(?P<day>\d{4}-\d{2}-\d{2})-model=(?P<model>\d+)-[0-9a-f]+$")


def staging_root(scores_root: str | Path) -> Path:
    """Scratch space beside the scores table (same file system, so renames are atomic)."""
    root = Path(scores_root)
    return root.parent / f".{root.name}.staging"


def staging_dir(scores_root: str | Path, batch_id: int, model_run_id: int) -> Path:
    return staging_root(scores_root) / f"batch-{batch_id}" / f"model-run-{model_run_id}"


def partition_dir(scores_root: str | Path, day: dt.date, model_id: int) -> Path:
    return Path(scores_root) / f"dt={day.isoformat()}" / f"model={model_id}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: Path, scores_root: str | Path, day: dt.date, model_id: int) -> Path:
    """Replace partition (day, model) with the staged directory; return the partition path."""
    final = partition_dir(scores_root, day, model_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    trash_root = staging_root(scores_root)
    trash_root.mkdir(parents=True, exist_ok=True)
    for f in staged.iterdir():  # the files must be on disk before they become visible
        with open(f, "rb") as handle:
            os.fsync(handle.fileno())
    trash = trash_root / f"trash-dt={day.isoformat()}-model={model_id}-{uuid.uuid4().hex[:12]}"
    if final.exists():
        os.rename(final, trash)
    fault_point("swapping")  # the window recover() repairs
    os.rename(staged, final)
    _fsync_dir(final.parent)
    shutil.rmtree(trash, ignore_errors=True)
    return final


def discard_staging(scores_root: str | Path, batch_id: int) -> None:
    shutil.rmtree(staging_root(scores_root) / f"batch-{batch_id}", ignore_errors=True)


def recover(scores_root: str | Path, *, clean: bool = True) -> list[Path]:
    """After a crash: put back old partitions caught between the two renames.

    With clean (at start-up, when no batch job can be running) leftover staging is deleted too.
    """
    restored: list[Path] = []
    root = staging_root(scores_root)
    if not root.is_dir():
        return restored
    for entry in root.iterdir():
        m = _TRASH_RE.match(entry.name)
        if m:
            final = partition_dir(scores_root, dt.date.fromisoformat(m["day"]), int(m["model"]))
            if not final.exists():
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(entry, final)
                restored.append(final)
                continue
        if clean or m:
            shutil.rmtree(entry, ignore_errors=True)
    return restored


def previous_partition(
    scores_root: str | Path, day: dt.date, model_id: int
) -> tuple[dt.date, Path] | None:
    """The model's latest scored partition before day (the DQ reference)."""
    best: tuple[dt.date, Path] | None = None
    root = Path(scores_root)
    if not root.is_dir():
        return None
    for day_dir in root.glob("dt=*"):
        try:
            d = dt.date.fromisoformat(day_dir.name[3:])
        except ValueError:
            continue
        part = day_dir / f"model={model_id}"
        if (
            d < day
            and part.is_dir()
            and any(part.glob("*.parquet"))
            and (best is None or d > best[0])
        ):
            best = (d, part)
    return best
