"""Developer tools: write a new revision from records.py, and detect schema drift."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from mldropd.db import _alembic_config, make_engine
from mldropd.migrations import CONTEXT_OPTIONS


def drift(engine: Engine) -> list[Any]:
    """Differences between records.py and a database (empty when the schema matches)."""
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts=CONTEXT_OPTIONS)
        return list(compare_metadata(context, SQLModel.metadata))


def _scratch_engine(folder: str) -> Engine:
    """A new database upgraded to the newest revision."""
    engine = make_engine(Path(folder) / "scratch.db")
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "head")
    return engine


def head_drift() -> list[Any]:
    """What records.py has that the migrations do not create (or the reverse)."""
    with tempfile.TemporaryDirectory() as folder:
        engine = _scratch_engine(folder)
        try:
            return drift(engine)
        finally:
            engine.dispose()


def new_revision(message: str) -> Path | None:
    """Autogenerate the next numbered revision from records.py; None when nothing changed."""
    script = ScriptDirectory.from_config(_alembic_config())
    numbers = [int(r.revision) for r in script.walk_revisions() if r.revision.isdigit()]
    rev_id = f"{max(numbers, default=0) + 1:04d}"
    with tempfile.TemporaryDirectory() as folder:
        engine = _scratch_engine(folder)
        try:
            if not drift(engine):
                return None
            with engine.begin() as conn:
                written = command.revision(
                    _alembic_config(conn), message=message, autogenerate=True, rev_id=rev_id
                )
        finally:
            engine.dispose()
    scripts = written if isinstance(written, list) else [written]
    if not scripts or scripts[0] is None:
        return None
    path = Path(scripts[0].path)
    lines = path.read_text().splitlines(keepends=True)  # drop Alembic's "### commands" banners
    path.write_text("".join(line for line in lines if not line.strip().startswith("# ###")))
    # House style; ruff is in the test extra, so a developer has it.
    subprocess.run([sys.executable, "-m", "ruff", "format", "-q", str(path)], check=False)
    return path
