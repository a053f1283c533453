"""Migration 0006 moves model files from e-mail/name folders to id folders, in a local folder
and in S3 (a moto server), and back; o'brien@ and o_brien@ shared a folder before it."""

from __future__ import annotations

import hashlib
import sqlite3
import uuid
from pathlib import Path

import pytest
from alembic import command

from mldropd.db import _alembic_config, head_revision, init_db, make_engine, schema_revision
from mldropd.settings import StorageSettings
from mldropd.store import make_store
from tests.support.s3 import BUCKET, KEY_ID, SECRET

OBRIEN, O_BRIEN, ANN = "o'brien@example.com", "o_brien@example.com", "ann@example.com"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])  # s3: moto_url
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> StorageSettings:
    if request.param == "local":
        return StorageSettings(kind="local", path=str(tmp_path / "artifacts"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return StorageSettings(
        kind="s3",
        bucket=BUCKET,
        prefix=f"m0006-{uuid.uuid4().hex[:8]}",
        endpoint_url=request.getfixturevalue("moto_url"),
        region="us-east-1",
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _database_at_0005(db: Path, storage: StorageSettings) -> dict[str, bytes]:
    """Three users' models stored the old way; o_brien's upload replaced o'brien's file."""
    engine = make_engine(db)
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0005")
    engine.dispose()
    store = make_store(storage)
    files = {
        "ann v1": b"ann churn v1",
        "ann v2": b"ann churn v2",
        "obrien": b"o'brien's model",
        "o_brien": b"o_brien's model",
    }
    rows = [  # (user id, email, model id, name, version, file, old key)
        (1, ANN, 1, "churn", 1, "ann v1", "ann@example.com/churn/v1/model.dill"),
        (1, ANN, 1, "churn", 2, "ann v2", "ann@example.com/churn/v2/model.dill"),
        (2, OBRIEN, 2, "m", 1, "obrien", "o_brien@example.com/m/v1/model.dill"),
        (3, O_BRIEN, 3, "m", 1, "o_brien", "o_brien@example.com/m/v1/model.dill"),
    ]
    with sqlite3.connect(db) as con:
        for user_id, email, model_id, name, version, file, key in rows:
            con.execute(
                "INSERT OR IGNORE INTO user (id, email, is_admin, token_hash, disabled, "
                "created_at) VALUES (?, ?, 0, ?, 0, '2026-01-01')",
                (user_id, email, f"h{user_id}"),
            )
            con.execute(
                "INSERT OR IGNORE INTO model (id, owner_id, name, email, schedule, status, "
                "version, dq, created_at, updated_at) VALUES (?, ?, ?, ?, 'daily', 'active', "
                "?, '{}', '2026-01-01', '2026-01-01')",
                (model_id, user_id, name, email, version),
            )
            con.execute(
                "INSERT INTO model_version (model_id, version, artifact_key, sha256, size, "
                "features, contract, dry_run, scan, uploaded_by, uploaded_at) VALUES "
                "(?, ?, ?, ?, ?, '[]', '{}', '{}', '{}', ?, '2026-01-01')",
                (model_id, version, key, _sha(files[file]), len(files[file]), email),
            )
            store.put_file(key, _write(db.parent / "f", files[file]))  # o_brien's replaces
            store.put_bytes(key.replace("model.dill", "manifest.json"), b"{}")
    return files


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _keys(db: Path) -> dict[tuple[int, int], str]:
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT model_id, version, artifact_key FROM model_version").fetchall()
    return {(m, v): k for m, v, k in rows}


def test_upgrade_moves_files_to_id_folders_and_downgrade_moves_them_back(
    tmp_path: Path, storage: StorageSettings, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "mldropd.db"
    files = _database_at_0005(db, storage)
    store = make_store(storage)
    engine = make_engine(db)

    init_db(engine, storage)
    head = head_revision()  # 0006, or a later revision the lead chained after it
    assert schema_revision(engine) == head
    keys = _keys(db)
    assert keys == {
        (1, 1): "users/1/models/1/v1/model.dill",
        (1, 2): "users/1/models/1/v2/model.dill",
        (2, 1): "users/2/models/2/v1/model.dill",
        (3, 1): "users/3/models/3/v1/model.dill",
    }
    assert store.get_bytes(keys[1, 1]) == files["ann v1"]
    assert store.get_bytes(keys[1, 2]) == files["ann v2"]
    assert store.get_bytes(keys[3, 1]) == files["o_brien"]
    # o'brien's file had been replaced by o_brien's: not copied to o'brien's folder, and named.
    assert not store.exists(keys[2, 1])
    assert "model m (id 2) v1" in caplog.text and "upload this model again" in caplog.text
    assert all(key.startswith("users/") for key in store.list())  # old folders removed
    assert store.exists("users/1/models/1/v1/manifest.json")

    # Back to 0005: refused while two models would share a folder again ...
    with engine.begin() as conn, pytest.raises(RuntimeError, match="would share the folder"):
        command.downgrade(_alembic_config(conn, storage), "0005")
    # 0006 itself undid nothing (revisions chained after it may have been undone first).
    assert schema_revision(engine) in (head, "0006") and _keys(db) == keys
    # ... and done once one of them is gone.
    with sqlite3.connect(db) as con:
        con.execute("DELETE FROM model_version WHERE model_id = 2")
        con.execute("DELETE FROM model WHERE id = 2")
    with engine.begin() as conn:
        config = _alembic_config(conn, storage)
        command.downgrade(config, "0005")
    for step in config.attributes["after_commit"]:
        step()
    assert schema_revision(engine) == "0005"
    back = _keys(db)
    assert back == {
        (1, 1): "ann@example.com/churn/v1/model.dill",
        (1, 2): "ann@example.com/churn/v2/model.dill",
        (3, 1): "o_brien@example.com/m/v1/model.dill",
    }
    assert store.get_bytes(back[1, 2]) == files["ann v2"]
    assert store.get_bytes(back[3, 1]) == files["o_brien"]
    assert not any(key.startswith("users/") for key in store.list())
    engine.dispose()


def test_upgrade_without_the_store_names_what_to_do(tmp_path: Path) -> None:
    db = tmp_path / "mldropd.db"
    storage = StorageSettings(kind="local", path=str(tmp_path / "artifacts"))
    _database_at_0005(db, storage)
    engine = make_engine(db)
    with pytest.raises(Exception, match="needs the artifact store"):
        init_db(engine)
    assert schema_revision(engine) == "0005"  # nothing half-done
    engine.dispose()
