"""SQLite engine (WAL, busy timeout) and sessions, shared by the daemon and the batch job."""

from __future__ import annotations

import fcntl
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import event, inspect
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from mldropd import __version__, records  # noqa: F401  (registers the tables)
from mldropd.errors import MldropdError

if TYPE_CHECKING:
    from alembic.config import Config

    from mldropd.settings import StorageSettings

log = logging.getLogger(__name__)


def make_engine(path: str | Path, *, busy_timeout_s: float = 30.0) -> Engine:
    """An engine on the SQLite file, with WAL so the batch job and the daemon write concurrently.

    busy_timeout_s: how long a write waits for another connection's write lock."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"check_same_thread": False, "timeout": busy_timeout_s},
    )

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        cursor.close()

    return engine


def init_db(engine: Engine, storage: StorageSettings | None = None) -> None:
    """Bring the database to the current schema (Alembic migrations; see upgrade_db).

    `storage`: the artifact store, for migrations that move its files (0006)."""
    upgrade_db(engine, storage=storage)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


# -- schema migrations (Alembic, mldropd/migrations) ---------------------------------------------
FIRST_REVISION = "0001"


class SchemaTooNew(MldropdError):
    """The database was upgraded by a newer mldropd; this one must not touch it."""


def _alembic_config(
    connection: Connection | None = None, storage: StorageSettings | None = None
) -> Config:
    from alembic.config import Config

    from mldropd.migrations import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    config.attributes["storage"] = storage  # for migrations that move artifacts
    config.attributes["after_commit"] = []  # callables run once the upgrade has committed
    return config


def head_revision() -> str:
    """The newest schema revision this mldropd knows."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def schema_revision(engine: Engine) -> str | None:
    """The database's schema revision (None: not versioned yet)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def copy_database(src: str | Path, dest: str | Path) -> None:
    """A consistent copy of a live SQLite database (online backup API; writers may go on)."""
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(src, timeout=30)
    target = sqlite3.connect(dest)
    try:
        with target:
            source.backup(target)
    finally:
        target.close()
        source.close()


def upgrade_db(
    engine: Engine, *, backup: bool = True, storage: StorageSettings | None = None
) -> str:
    """Upgrade the database to the newest revision, after a copy to <db>.bak-<revision>.

    An empty database is created at the newest revision; one created before migrations
    existed (tables, no version) is taken as the first revision. A database whose revision
    this mldropd does not know was upgraded by a newer one: SchemaTooNew, nothing is touched.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    db_path = Path(str(engine.url.database))
    script = ScriptDirectory.from_config(_alembic_config())
    head = str(script.get_current_head())
    known = {rev.revision for rev in script.walk_revisions()}
    # One upgrader at a time: the daemon and a CLI command may start together.
    with open(f"{db_path}.migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        current = schema_revision(engine)
        if current == head:
            return head
        if current is not None and current not in known:
            raise SchemaTooNew(
                f"the database {db_path} has schema revision {current}, which this mldropd "
                f"{__version__} does not know (its newest is {head}): a newer mldropd has "
                "upgraded it. Run that newer mldropd, or restore a backup taken before the "
                f"upgrade (`mldropd restore DIR`, or the copy {db_path}.bak-<revision>)."
            )
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        unversioned = current is None and "user" in tables  # made by create_all, before 0001
        if unversioned:
            current = FIRST_REVISION
        if current is not None and backup:
            copy = Path(f"{db_path}.bak-{current}")
            copy_database(db_path, copy)
            log.info("database backed up to %s before the upgrade", copy)
        if unversioned:
            with engine.begin() as conn:
                command.stamp(_alembic_config(conn), FIRST_REVISION)
            log.info("unversioned database %s taken as schema revision %s", db_path, current)
        with engine.begin() as conn:
            config = _alembic_config(conn, storage)
            command.upgrade(config, "head")
        for step in config.attributes["after_commit"]:  # e.g. old artifact folders removed
            step()
        log.info(
            "database %s upgraded from schema revision %s to %s",
            db_path,
            current or "(empty)",
            head,
        )
        return head
