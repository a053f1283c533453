"""Schema migrations: records.py and the revisions agree; upgrades keep data and back up first;
a database from a newer mldropd is refused, by the library and by `mldropd serve`."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import mldropd.migrations
from mldropd.db import (
    FIRST_REVISION,
    SchemaTooNew,
    head_revision,
    init_db,
    make_engine,
    schema_revision,
)
from mldropd.migrations.tools import drift, head_drift
from tests.support.schema import at_first_revision

SECOND = '''"""test: a note on users"""

import sqlalchemy as sa
from alembic import op

revision = "test_note"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("user") as batch_op:
        batch_op.add_column(sa.Column("note", sa.String(), nullable=False, server_default="-"))


def downgrade() -> None:
    with op.batch_alter_table("user") as batch_op:
        batch_op.drop_column("note")
'''


def test_records_and_migrations_do_not_drift() -> None:
    """Fails when records.py changes without a revision: `python -m mldropd.migrations revision`."""
    assert head_drift() == []


def test_upgrade_from_the_first_revision_keeps_the_data(tmp_path: Path) -> None:
    db = tmp_path / "mldropd.db"
    at_first_revision(db)
    engine = make_engine(db)
    init_db(engine)
    assert schema_revision(engine) == head_revision()
    assert drift(engine) == []
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT email FROM user").fetchall() == [("ann@example.com",)]
    if head_revision() != FIRST_REVISION:  # there was something to upgrade: backed up first
        assert (tmp_path / f"mldropd.db.bak-{FIRST_REVISION}").is_file()
    init_db(engine)  # at head: nothing to do, no new backup
    assert sorted(p.name for p in tmp_path.glob("*.bak-*")) == (
        [] if head_revision() == FIRST_REVISION else [f"mldropd.db.bak-{FIRST_REVISION}"]
    )


def test_upgrade_backs_up_then_migrates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new revision on top of the current ones: the upgrade path, backup included."""
    scripts = tmp_path / "migrations"
    shutil.copytree(
        mldropd.migrations.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    head = head_revision()
    (scripts / "versions" / "test_note.py").write_text(SECOND.format(head=head))
    db = tmp_path / "mldropd.db"
    at_first_revision(db)
    engine = make_engine(db)
    init_db(engine)  # to the real head first
    monkeypatch.setattr(mldropd.migrations, "MIGRATIONS_DIR", scripts)
    init_db(engine)
    assert schema_revision(engine) == "test_note"
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT email, note FROM user").fetchall() == [("ann@example.com", "-")]
    backup = tmp_path / f"mldropd.db.bak-{head}"
    with sqlite3.connect(backup) as con:  # the copy is the database before the upgrade
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(head,)]
        assert "note" not in {row[1] for row in con.execute("PRAGMA table_info(user)")}


def test_a_database_made_before_migrations_is_adopted(tmp_path: Path) -> None:
    """create_all made the first revision's tables, without Alembic's version table."""
    db = tmp_path / "mldropd.db"
    at_first_revision(db)
    with sqlite3.connect(db) as con:
        con.execute("DROP TABLE alembic_version")
    engine = make_engine(db)
    assert schema_revision(engine) is None
    init_db(engine)
    assert schema_revision(engine) == head_revision()
    assert drift(engine) == []
    assert (tmp_path / f"mldropd.db.bak-{FIRST_REVISION}").is_file()


@pytest.mark.slow  # `mldropd serve` in a real process
def test_a_newer_database_is_refused(tmp_path: Path, home: Path) -> None:
    db = home / "mldropd.db"
    engine = make_engine(db)
    init_db(engine)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaTooNew, match="schema revision 9999, which this mldropd"):
        init_db(engine)
    engine.dispose()
    result = subprocess.run(
        [sys.executable, "-m", "mldropd", "serve", "--config", str(home / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "a newer mldropd has upgraded it" in result.stderr
    assert "Traceback" not in result.stderr
    with sqlite3.connect(db) as con:  # untouched
        assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]
    assert not list(home.glob("mldropd.db.bak-*"))


NEW_REVISION = """
import sys
from pathlib import Path

import sqlalchemy as sa

import mldropd.migrations
from mldropd import records

mldropd.migrations.MIGRATIONS_DIR = Path(sys.argv[1])
from mldropd.migrations.tools import head_drift, new_revision

assert new_revision("nothing") is None  # no change in records.py: no revision
records.User.__table__.append_column(sa.Column("note", sa.String(), nullable=True))
print(new_revision("user.note: free text"))
assert head_drift() == []
"""


@pytest.mark.slow  # the revision tool (and ruff format) in real processes
def test_the_revision_tool_writes_the_next_numbered_revision(tmp_path: Path) -> None:
    """`python -m mldropd.migrations revision` as a developer runs it, on a copy."""
    scripts = tmp_path / "migrations"
    shutil.copytree(
        mldropd.migrations.MIGRATIONS_DIR, scripts, ignore=shutil.ignore_patterns("__pycache__")
    )
    result = subprocess.run(
        [sys.executable, "-c", NEW_REVISION, str(scripts)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = Path(result.stdout.strip().splitlines()[-1])
    number = int(head_revision()) + 1
    assert written.parent == scripts / "versions"
    assert written.name == f"{number:04d}_user_note_free_text.py"
    text = written.read_text()
    assert 'batch_op.add_column(sa.Column("note", sa.String(), nullable=True))' in text
    assert f'down_revision = "{head_revision()}"' in text and "sqlmodel" not in text
    assert "###" not in text
