"""Command line of the artifact store and quotas: `mldropd store check`, `mldropd users set-quota`.

Registered on the main group by mldropd/cli.py (register(main)).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mldropd.cli_common import config_option, load_config, open_registry
from mldropd.errors import MldropdError
from mldropd.store.base import ArtifactStore, manifest_key, sha256_file

if TYPE_CHECKING:  # the database's libraries load when a command needs them
    from mldropd.records import ModelVersion
    from mldropd.services import ModelService

# ---- store check ---------------------------------------------------------------------------


@dataclass
class ArtifactCheck:
    """One database artifact and what is wrong with it (nothing when problems is empty)."""

    key: str
    model_id: int
    model_name: str
    version: int
    size: int
    missing: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def what(self) -> str:
        return f"model {self.model_id} {self.model_name} v{self.version}"


@dataclass
class StoreReport:
    """The result of checking the store against the database."""

    store: str
    artifacts: list[ArtifactCheck] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def bad(self) -> list[ArtifactCheck]:
        return [a for a in self.artifacts if a.problems]

    @property
    def ok(self) -> bool:
        return not self.bad and not self.orphans


def _short(digest: str) -> str:
    return digest[:12] + "…" if len(digest) > 12 else digest or "(none)"


def _check_manifest(store: ArtifactStore, row: ModelVersion, listed: set[str]) -> list[str]:
    key = manifest_key(row.artifact_key)
    if key not in listed:
        return [f"its manifest {key} is missing"]
    try:
        manifest = json.loads(store.get_bytes(key))
    except ValueError as exc:
        return [f"its manifest {key} is not valid JSON: {exc}"]
    if manifest.get("sha256") != row.sha256:
        return [
            f"its manifest gives sha256 {_short(str(manifest.get('sha256')))}, "
            f"the database {_short(row.sha256)}"
        ]
    return []


def _check_artifact(store: ArtifactStore, row: ModelVersion, scratch: Path) -> list[str]:
    """The object's size and sha256, from a download streamed to disk (memory stays flat)."""
    local = scratch / "artifact"
    try:
        store.get_file(row.artifact_key, local)
        size, digest = local.stat().st_size, sha256_file(local)
    finally:
        local.unlink(missing_ok=True)
    problems = []
    if size != row.size:
        problems.append(f"the object has {size:,} bytes, the database says {row.size:,}")
    if digest != row.sha256:
        problems.append(
            f"sha256 {_short(digest)} in the store, {_short(row.sha256)} in the database"
        )
    return problems


def check_store(models: ModelService, store: ArtifactStore, work_dir: str) -> StoreReport:
    """Every database artifact exists with its sha256 and manifest; list objects no row uses."""
    from mldropd.services import cli

    report = StoreReport(store=store.describe())
    rows = models.artifacts(cli())
    listed = set(store.list())
    expected: set[str] = set()
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="store-check-", dir=work_dir))
    try:
        for row, model in rows:
            check = ArtifactCheck(
                row.artifact_key, model.id or 0, model.name, row.version, row.size
            )
            if not store.exists(row.artifact_key):  # a HEAD first: no download of nothing
                check.missing = True
                check.problems = ["the object is missing from the store"]
            else:
                check.problems = _check_artifact(store, row, scratch)
            if not check.problems:
                check.problems = _check_manifest(store, row, listed)
            expected |= {row.artifact_key, manifest_key(row.artifact_key)}
            report.artifacts.append(check)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report.orphans = sorted(listed - expected)
    return report


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def print_report(report: StoreReport, verbose: bool) -> None:
    """The report as lines an operator can read and grep."""
    click.echo(f"store: {report.store}")
    for a in report.artifacts:
        if a.problems:
            label = "MISSING" if a.missing else "BAD"
            click.echo(f"{label:<8} {a.key} ({a.what}): {'; '.join(a.problems)}")
        elif verbose:
            click.echo(f"{'ok':<8} {a.key} ({a.what}, {_size(a.size)})")
    for key in report.orphans:
        click.echo(f"{'ORPHAN':<8} {key} (no database row points at it)")
    good = len(report.artifacts) - len(report.bad)
    click.echo(
        f"{len(report.artifacts)} artifact(s) checked: {good} ok, {len(report.bad)} with "
        f"problems; {len(report.orphans)} orphan object(s)"
    )
    if report.ok:
        click.echo("OK: every artifact is in the store with its sha256; no orphans")
    else:
        click.echo(
            "PROBLEMS: upload the models marked MISSING or BAD again (or delete those versions); "
            "ORPHAN objects are left by failed deletes or uploads in flight and can be removed"
        )


@click.group("store")
def store_group() -> None:
    """Check the artifact store against the database."""


@store_group.command("check")
@config_option
@click.option("--verbose", "-v", is_flag=True, help="List the artifacts that are fine too.")
def store_check(config: str | None, verbose: bool) -> None:
    """Verify every artifact's presence and sha256 (downloaded) and list orphans; exit 1 on
    problems."""
    from mldropd.services import Services
    from mldropd.store import make_store

    settings = load_config(config)
    try:
        store = make_store(settings.storage)
        models = Services.build(open_registry(settings), settings).models
        report = check_store(models, store, settings.server.work_dir)
    except MldropdError as exc:
        raise click.ClickException(exc.message) from None
    print_report(report, verbose)
    sys.exit(0 if report.ok else 1)


# ---- users set-quota -----------------------------------------------------------------------


def _parse_quota(value: str) -> int | None:
    if value.strip().lower() == "default":
        return None
    try:
        quota = int(value)
    except ValueError:
        quota = -1
    if quota < 0:
        raise click.BadParameter(
            f"{value!r} is not a whole number >= 0 (or 'default')", param_hint="N"
        )
    return quota


@click.command("set-quota")
@click.argument("email")
@click.argument("n")
@config_option
def set_quota_command(email: str, n: str, config: str | None) -> None:
    """Set EMAIL's quota of active models to N ('default': back to [limits])."""
    from mldropd.services import Services, cli

    settings = load_config(config)
    quota = _parse_quota(n)
    users = Services.build(open_registry(settings), settings).users
    try:
        user = users.set_quota(cli(), email, quota)
    except MldropdError as exc:
        raise click.ClickException(exc.message) from None
    limit, active = user["quota"], user["active_models"]
    source = "set for the user" if user["quota_source"] == "user" else "the default of [limits]"
    click.echo(
        f"{user['email']}: quota {limit} active model(s) ({source}); {len(active)} active"
        + (f": {', '.join(active)}" if active else "")
    )
    if len(active) > limit:
        click.echo(
            f"note: {len(active)} active is above the quota; nothing is paused, but new models "
            "and re-activations are refused until fewer are active"
        )


def register(main: click.Group) -> None:
    """Add `store check` and `users set-quota` to the main command group."""
    main.add_command(store_group)
    users = main.commands["users"]
    assert isinstance(users, click.Group)
    users.add_command(set_quota_command)
