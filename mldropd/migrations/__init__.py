"""Alembic migrations of the mldropd database (SQLite). See docs/operations.md, "Upgrades".

The options below are shared by env.py (upgrades, autogenerate) and the drift check, so both
see the schema the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.sql.schema import SchemaItem
from sqlmodel.sql import sqltypes

MIGRATIONS_DIR = Path(__file__).parent
# APScheduler creates and owns its job table; it is not part of our schema.
FOREIGN_TABLES = frozenset({"apscheduler_jobs"})


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Leave tables we do not own (and their indexes) out of autogenerate and drift checks."""
    if type_ == "table":
        return name not in FOREIGN_TABLES
    table = getattr(obj, "table", None)
    return table is None or table.name not in FOREIGN_TABLES


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Write SQLModel's column types as plain SQLAlchemy ones: revisions never import sqlmodel."""
    if type_ != "type":
        return False
    if isinstance(obj, sqltypes.AutoString):
        length = getattr(obj.impl, "length", None)
        return "sa.String()" if length is None else f"sa.String(length={length})"
    utc = getattr(sqltypes, "UTCDateTime", None)  # sqlmodel >= 0.0.50
    if utc is not None and isinstance(obj, utc):
        return "sa.DateTime(timezone=True)"
    return False


CONTEXT_OPTIONS: dict[str, Any] = {
    "include_object": include_object,
    "render_item": render_item,
    "render_as_batch": True,  # SQLite cannot ALTER most things: copy-and-move tables instead
    "compare_type": True,
}
