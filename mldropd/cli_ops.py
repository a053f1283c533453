"""`mldropd backup DIR` and `mldropd restore DIR`: the database and the model artifacts.

Backup works while the daemon runs: SQLite's online backup API copies a consistent database,
then the artifacts are copied (local store) or listed (S3, which keeps its own copies), each
with its SHA-256 in DIR/manifest.json. The database is copied first: an upload that lands in
between leaves an artifact no record points to, which is harmless (the reverse would not be).

Registered on the main group by mldropd/cli.py (register(main)).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from pathlib import Path
from typing import Any

import click

from mldropd import __version__
from mldropd.cli_common import config_option, load_config
from mldropd.settings import Settings
from mldropd.store.base import ArtifactStore, sha256_file

MANIFEST = "manifest.json"
DB_FILE = "mldropd.db"
FORMAT = 1


def _daemon_address(settings: Settings) -> str | None:
    """host:port when something answers on the daemon's configured port, else None."""
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        with socket.create_connection((host, settings.server.port), timeout=1):
            return f"{host}:{settings.server.port}"
    except OSError:
        return None


def _referenced(settings: Settings, db_file: Path) -> dict[str, str]:
    """artifact key -> sha256 of every model version recorded in a database file."""
    from mldropd.db import make_engine
    from mldropd.services import Services, cli

    engine = make_engine(db_file)
    try:
        artifacts = Services.build(engine, settings).models.artifacts(cli())
        return {v.artifact_key: v.sha256 for v, _ in artifacts}
    finally:
        engine.dispose()


def write_backup(settings: Settings, folder: Path) -> dict[str, Any]:
    """Back up the database and the artifacts into an empty folder; return the manifest."""
    from mldropd.db import copy_database, make_engine, schema_revision
    from mldropd.store import make_store

    if folder.exists() and any(folder.iterdir()):
        raise click.ClickException(f"{folder} is not empty: back up into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    db_copy = folder / DB_FILE
    copy_database(settings.database.path, db_copy)
    engine = make_engine(db_copy)
    revision = schema_revision(engine)
    engine.dispose()
    referenced = _referenced(settings, db_copy)
    store = make_store(settings.storage)
    local = settings.storage.kind == "local"
    artifacts = []
    for key in store.list():
        entry: dict[str, Any] = {"key": key, "sha256": referenced.get(key), "size": None}
        if local:
            dest = folder / "artifacts" / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, dest)
            entry.update(sha256=sha256_file(dest), size=dest.stat().st_size)
        artifacts.append(entry)
    listed = {a["key"] for a in artifacts}
    manifest = {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mldropd_version": __version__,
        "schema_revision": revision,
        "database": {"file": DB_FILE, "sha256": sha256_file(db_copy)},
        "storage": {"kind": settings.storage.kind, "where": store.describe(), "copied": local},
        "artifacts": artifacts,
        "missing": sorted(set(referenced) - listed),  # recorded, but not in the store
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_backup(folder: Path) -> dict[str, Any]:
    """The manifest of a backup folder, after checking every file against its SHA-256."""
    path = folder / MANIFEST
    if not path.is_file():
        raise click.ClickException(f"{folder} is not an mldropd backup (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise click.ClickException(f"{path}: unknown backup format {manifest.get('format')!r}")
    bad = []
    db_copy = folder / manifest["database"]["file"]
    if not db_copy.is_file() or sha256_file(db_copy) != manifest["database"]["sha256"]:
        bad.append(str(db_copy))
    if manifest["storage"]["copied"]:
        for entry in manifest["artifacts"]:
            copy = folder / "artifacts" / entry["key"]
            if not copy.is_file() or sha256_file(copy) != entry["sha256"]:
                bad.append(str(copy))
    if bad:
        raise click.ClickException(
            "the backup is damaged (missing, or its SHA-256 differs from the manifest): "
            + ", ".join(bad)
        )
    return manifest


def _restore_artifacts(manifest: dict[str, Any], folder: Path, store: ArtifactStore) -> list[str]:
    """Put the copied artifacts back into the store; return the keys still missing from it."""
    missing = []
    for entry in manifest["artifacts"]:
        if manifest["storage"]["copied"]:
            store.put_file(entry["key"], folder / "artifacts" / entry["key"])
        elif not store.exists(entry["key"]):
            missing.append(entry["key"])
    return missing


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@config_option
def backup(folder: Path, config: str | None) -> None:
    """Back up the database and the model artifacts into FOLDER (the daemon may keep running)."""
    settings = load_config(config)
    manifest = write_backup(settings, folder.resolve())
    artifacts = manifest["artifacts"]
    how = "copied" if manifest["storage"]["copied"] else "listed (they stay in the bucket)"
    click.echo(
        f"backed up {settings.database.path} (schema revision {manifest['schema_revision']}) "
        f"and {len(artifacts)} artifact(s), {how}, into {folder.resolve()}"
    )
    for key in manifest["missing"]:
        click.echo(f"warning: artifact {key} is recorded but missing from the store", err=True)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@config_option
@click.option("--force", is_flag=True, help="Restore even though a daemon seems to be running.")
def restore(folder: Path, config: str | None, force: bool) -> None:
    """Restore the database and the artifacts from a backup FOLDER (stop the daemon first)."""
    from mldropd.db import copy_database
    from mldropd.store import make_store

    settings = load_config(config)
    address = _daemon_address(settings)
    if address and not force:
        raise click.ClickException(
            f"a daemon is answering on {address}: stop it before restoring (a running daemon "
            "would keep writing to the database being replaced), or pass --force"
        )
    manifest = _check_backup(folder)
    db_path = Path(settings.database.path)
    if db_path.exists():  # a way back, should the backup be the wrong one
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        previous = db_path.with_name(f"{db_path.name}.before-restore-{stamp}")
        copy_database(db_path, previous)
        click.echo(f"the current database was saved as {previous}")
    copy_database(folder / manifest["database"]["file"], db_path)
    missing = _restore_artifacts(manifest, folder, make_store(settings.storage))
    click.echo(
        f"restored {db_path} (schema revision {manifest['schema_revision']}, backup of "
        f"{manifest['created_at']}) and {len(manifest['artifacts'])} artifact(s)"
    )
    for key in missing:
        click.echo(f"warning: artifact {key} is not in {settings.storage.bucket}", err=True)
    click.echo("start the daemon: it upgrades the database if the backup is from an older version")


def register(main: click.Group) -> None:
    """Add backup and restore to the mldropd command group."""
    main.add_command(backup)
    main.add_command(restore)
