"""Databases at an old schema revision, for the upgrade tests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command

from mldropd.db import FIRST_REVISION, _alembic_config, make_engine


def at_first_revision(path: Path) -> None:
    """A database as the first schema revision made it, with one user in it."""
    engine = make_engine(path)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), FIRST_REVISION)
    engine.dispose()
    with sqlite3.connect(path) as con:
        con.execute(
            "INSERT INTO user (email, is_admin, token_hash, disabled, created_at) "
            "VALUES ('ann@example.com', 0, 'h', 0, '2026-01-01 00:00:00')"
        )
