"""Alembic environment: runs on the connection mldropd.db hands over in config.attributes."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlmodel import SQLModel

from mldropd import records  # noqa: F401  (registers the tables on SQLModel.metadata)
from mldropd.migrations import CONTEXT_OPTIONS


def run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=SQLModel.metadata, **CONTEXT_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run(connection)
else:  # started by the alembic command line with sqlalchemy.url set
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
