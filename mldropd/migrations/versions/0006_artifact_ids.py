"""model files move to folders named by ids: users/<user id>/models/<model id>/v<n>/

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:00:00

Before, a folder was derived from the owner's e-mail and the model's name, and two e-mails
that differ only in characters the folder name replaced (o'brien@ and o_brien@) shared one:
the second user's upload replaced the first user's file. Each file is copied to its new key
(local folder or S3 alike), checked against the sha256 its row recorded, and the row repointed;
the old folders are deleted once the upgrade has committed (db.upgrade_db's after_commit), so a
failed upgrade leaves every row pointing at a file that exists. A file whose content belongs to
another model (the shared-folder case) is not copied: its row points at the new key, which
`mldropd store check` then reports as missing, and the log names the model to upload again.
Downgrade moves the files back, and refuses when two models would share an old folder.
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

log = logging.getLogger("mldropd.migrations")

_ROWS = sa.text(
    "SELECT v.id, v.version, v.artifact_key, v.sha256, m.id, m.name, u.id, u.email "
    "FROM model_version v JOIN model m ON m.id = v.model_id JOIN user u ON u.id = m.owner_id "
    "ORDER BY v.id"
)
_UNSAFE = re.compile(r"[^a-z0-9._@+-]")  # the old layout's folder rule, frozen here


def _legacy_key(email: str, name: str, version: int) -> str:
    folder = _UNSAFE.sub("_", email.lower()).strip(".") or "user"
    return f"{folder}/{name}/v{version}/model.dill"


def _id_key(user_id: int, model_id: int, version: int) -> str:
    return f"users/{user_id}/models/{model_id}/v{version}/model.dill"


def _folder(key: str) -> str:
    """The model folder of a version's key (two levels up from model.dill)."""
    return key.rsplit("/", 2)[0] + "/"


def _manifest(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/manifest.json"


def _store() -> Any:
    from mldropd.errors import ConfigError
    from mldropd.store import make_store

    storage = _attributes().get("storage")
    if storage is None:
        raise ConfigError(
            "schema revision 0006 moves the stored model files to id-based folders and needs "
            "the artifact store: upgrade through `mldropd serve` or any `mldropd` command "
            "given --config"
        )
    return make_store(storage)


def _attributes() -> dict[str, Any]:
    config = op.get_context().config
    return config.attributes if config is not None else {}


def _after_commit(step: Callable[[], object]) -> None:
    _attributes().setdefault("after_commit", []).append(step)


def _move(moves: list[tuple[int, str, str, str, str]]) -> None:
    """Copy each (row id, old key, new key, sha256, what) and repoint its row; old folders go
    after the commit."""
    from mldropd.errors import NotFound
    from mldropd.store.base import sha256_file

    if not moves:
        return
    store, conn = _store(), op.get_bind()
    with tempfile.TemporaryDirectory(prefix="mldropd-0006-") as tmp:
        for row_id, old, new, sha256, what in moves:
            local = Path(tmp, "model.dill")
            try:
                store.get_file(old, local)
            except NotFound:
                log.warning("%s: its file %s is missing; upload it again", what, old)
            else:
                if sha256_file(local) != sha256:
                    log.warning(
                        "%s: the file at %s belongs to another model (the folder was shared "
                        "by two e-mail addresses); upload this model again",
                        what,
                        old,
                    )
                else:
                    store.put_file(new, local)
                    with contextlib.suppress(NotFound):  # a copy for people; rows are the record
                        store.put_bytes(_manifest(new), store.get_bytes(_manifest(old)))
                local.unlink()
            conn.execute(
                sa.text("UPDATE model_version SET artifact_key = :key WHERE id = :id"),
                {"key": new, "id": row_id},
            )
    folders = sorted({_folder(old) for _, old, new, _, _ in moves})
    _after_commit(lambda: [store.delete_prefix(folder) for folder in folders])
    log.info("moved %d model files; %d old folders are removed", len(moves), len(folders))


def upgrade() -> None:
    rows = op.get_bind().execute(_ROWS).all()
    moves = [
        (row_id, key, new, sha256, f"model {name} (id {model_id}) v{version}")
        for row_id, version, key, sha256, model_id, name, user_id, _ in rows
        if key != (new := _id_key(user_id, model_id, version))
    ]
    _move(moves)


def downgrade() -> None:
    rows = op.get_bind().execute(_ROWS).all()
    moves: list[tuple[int, str, str, str, str]] = []
    owners: dict[str, tuple[str, str]] = {}
    for row_id, version, key, sha256, model_id, name, _, email in rows:
        old = _legacy_key(email, name, version)
        other = owners.setdefault(old, (email, name))
        if other != (email, name):
            raise RuntimeError(
                f"cannot go back to schema revision 0005: the models {other[1]} of {other[0]} "
                f"and {name} of {email} would share the folder {_folder(old)}. Delete one of "
                "them, or stay on this version"
            )
        if key != old:
            moves.append((row_id, key, old, sha256, f"model {name} (id {model_id}) v{version}"))
    _move(moves)
