"""Command line: serve, demo, users add, models check, run, check-config."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from mldropd.cli_common import config_option, load_config, open_registry
from mldropd.errors import MldropdError
from mldropd.settings import ENV_PREFIX, Settings, describe


def _server_overrides(host: str | None, port: int | None) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    if host:
        server["host"] = host
    if port:
        server["port"] = port
    return {"server": server} if server else {}


@click.group()
@click.version_option(package_name="mldropd")
def main() -> None:
    """mldropd: drop a model file, get it scored on schedule."""
    # What the daemon creates (database, key, sessions, artifacts, scores, outbox) is private
    # to its user: folders 0700, files 0600.
    os.umask(0o077)


def _serve(settings: Settings, banner: list[str] | None = None) -> None:
    import uvicorn

    from mldropd.app import create_app

    try:
        app = create_app(settings)
        # The sandbox's probe first: a required layer missing stops start-up with one message.
        app.state.daemon.sandboxes(batch_jobs=True).check()
    except MldropdError as exc:  # e.g. a database newer than this mldropd: say so, no traceback
        raise click.ClickException(exc.message) from None
    for line in banner or []:
        click.echo(line)
    # A log event, not a bare line: a JSON log stays one JSON object per line.
    logging.getLogger("mldropd").info("mldropd listening on %s", settings.base_url)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=30,
        # The client address must be the TCP peer: trusted_proxies is checked against it.
        proxy_headers=False,
    )


@main.command()
@config_option
@click.option("--host", help="Bind address (overrides [server] host).")
@click.option("--port", type=int, help="Port (overrides [server] port).")
def serve(config: str | None, host: str | None, port: int | None) -> None:
    """Run the daemon (web, API, scheduler) in the foreground."""
    _serve(load_config(config, _server_overrides(host, port)))


@main.command()
@click.option(
    "--dir",
    "home",
    default=".mldropd-demo",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Demo home folder.",
)
@click.option("--host", help="Bind address.")
@click.option("--port", type=int, help="Port.")
@click.option(
    "--rows",
    type=click.IntRange(min=1000),
    help="Customers per day in the demo's feature data, when the home is first made "
    "(default 20,000; fewer build faster).",
)
@click.option("--no-serve", is_flag=True, help="Only write the demo home and print the token.")
def demo(home: str, host: str | None, port: int | None, rows: int | None, no_serve: bool) -> None:
    """Write a demo home with 30 days of history under DIR, then serve it.

    The first start scores the 30 days (a few minutes); later starts reuse what is there.
    """
    from mldropd.demo import DEMO_ENTITIES, write_demo_home
    from mldropd.demo_history import DemoHomeError

    home_path = Path(home).resolve()
    email = "admin@example.com"
    click.echo(f"Preparing the demo home in {home_path} (features and models, once) ...", err=True)
    try:
        model_files = write_demo_home(
            home_path, port=port or 8080, n_entities=rows or DEMO_ENTITIES, email=email
        )
    except DemoHomeError as exc:
        raise click.ClickException(str(exc)) from None
    settings = load_config(str(home_path / "config.toml"), _server_overrides(host, port))
    token = _demo_admin(settings, email, model_files, home_path)
    banner = [
        "",
        f"  mldropd demo is starting at {settings.base_url}",
        f"  sign in with this token ({email}):",
        f"  {token}",
        f"  then open {settings.base_url.rstrip('/')}/dashboard: three models, 30 days of history",
        "",
    ]
    if no_serve:
        click.echo("\n".join(banner))
        return
    _serve(settings, banner)


def _demo_admin(settings: Settings, email: str, model_files: list[Path], home: Path) -> str:
    """Create the demo admin (or give it a fresh token), register the demo models and build the
    30 days of history, once."""
    from sqlmodel import Session, select

    from mldropd.auth import create_user, rotate_token
    from mldropd.daemon import Daemon
    from mldropd.demo_history import build_history, history_built
    from mldropd.demo_story import story_start
    from mldropd.intake import UploadForm, register_file
    from mldropd.records import Model, User

    daemon = Daemon(settings, with_scheduler=False)
    with Session(daemon.engine) as s:
        user = s.exec(select(User).where(User.email == email)).first()
    if user is None:
        user, token = create_user(daemon.engine, email, admin=True)
    else:
        token = rotate_token(daemon.engine, email)
    for path in model_files:
        with Session(daemon.engine) as s:
            model = s.exec(
                select(Model).where(Model.owner_id == user.id, Model.name == path.stem)
            ).first()
        if model is None:
            click.echo(f"Registering demo model {path.name} (validated in a sandbox) ...", err=True)
            register_file(
                daemon.engine,
                daemon.store,
                settings,
                user,
                path,
                UploadForm(filename=path.name),
                daemon.sandboxes(),
            )
    if not history_built(home):
        features = Path(settings.features.path)
        click.echo("Scoring 30 days of history, as the daemon would have (once) ...", err=True)
        seconds = build_history(
            daemon,
            user,
            home,
            story_start(features, daemon.today()),
            progress=lambda line: click.echo(f"  {line}", err=True),
        )
        click.echo(f"History built in {seconds:.0f} s.", err=True)
    daemon.stop()
    return token


@main.group()
def users() -> None:
    """Manage users and their API tokens."""


@users.command("add")
@click.argument("email")
@click.option("--admin", is_flag=True, help="Give admin rights (sees every model).")
@click.option("--quota", type=int, help="Active models allowed (default from [limits]).")
@config_option
def users_add(email: str, admin: bool, quota: int | None, config: str | None) -> None:
    """Create a user; prints the API token as the last line (shown only once)."""
    from mldropd.auth import create_user

    engine = open_registry(load_config(config))
    try:
        user, token = create_user(engine, email, admin=admin, quota=quota)
    except MldropdError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"created {'admin ' if admin else ''}user {user.email}; API token (shown once):")
    click.echo(token)


@main.group()
def models() -> None:
    """Work with model files."""


@models.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def models_check(file: str, config: str | None, as_json: bool) -> None:
    """Inspect and validate a model file as the upload would; print every problem."""
    from mldropd.inspect import inspect_file

    settings = load_config(config)
    result = inspect_file(Path(file), settings)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": result.ok,
                    "errors": [e.as_dict() for e in result.errors],
                    "scan": result.scan,
                    "summary": result.summary,
                    "dry_run": result.dry_run,
                    "warnings": result.warnings,
                },
                indent=2,
            )
        )
    else:
        scan = result.scan
        if scan.get("globals"):
            click.echo("imports: " + ", ".join(scan["globals"]))
        if scan.get("has_functions"):
            click.echo("contains serialized Python functions (lambdas or notebook functions)")
        if result.summary:
            s = result.summary
            click.echo(
                f"features: {len(s['features'])} ({', '.join(s['features'][:8])}"
                f"{', ...' if len(s['features']) > 8 else ''}); output: {s['output']}; "
                f"input: {s['input']}; pipeline: {s['pipeline_type']}"
            )
        if result.dry_run:
            d = result.dry_run
            click.echo(
                f"dry run: {d['rows']} rows of {d['slice_date']} in {d['seconds']} s; "
                f"scores {d['min']:.4g} .. {d['max']:.4g} (mean {d['mean']:.4g})"
            )
        for warning in result.warnings:
            click.echo(f"warning: {warning}")
        for e in result.errors:
            click.echo(f"problem: {e.field}: {e.message}", err=True)
        click.echo(
            "OK: the model can be deployed"
            if result.ok
            else f"NOT OK: {len(result.errors)} problem(s)"
        )
    sys.exit(0 if result.ok else 1)


@main.command("check-config")
@config_option
@click.option("--host", help="As for serve: show the effect of this flag.")
@click.option("--port", type=int, help="As for serve: show the effect of this flag.")
def check_config(config: str | None, host: str | None, port: int | None) -> None:
    """Load and validate the configuration; print the effective values and where each came from.

    Each line ends with its source: default, file, environment (with the variable's name) or
    flag. Secret-file settings and passwords inside URLs are shown as <redacted>.
    """
    import dataclasses
    import re

    settings = load_config(config, _server_overrides(host, port))
    click.echo(f"# config file: {settings.config_file or '(none: defaults and environment)'}")
    values = settings.to_dict()
    secrets = {
        (section, f.name)
        for section in values
        for f in dataclasses.fields(getattr(settings, section))
        if f.metadata.get("secret") or f.name.endswith("password_file")
    }
    current = None
    for section, key, _, help_text in describe():
        if section != current:
            click.echo(f"\n[{section}]")
            current = section
        value = values[section][key]
        if (section, key) in secrets and value:
            value = "<redacted>"
        elif isinstance(value, str):  # credentials in a URL: scheme://user:password@host
            value = re.sub(r"(://[^/:@\s]+:)[^@/\s]+@", r"\1<redacted>@", value)
        source = settings.sources.get(f"{section}.{key}", "default")
        if source == "environment":
            source = f"environment {ENV_PREFIX}{section.upper()}__{key.upper()}"
        click.echo(f"{key} = {json.dumps(value)}  # [{source}] {help_text}")
    problem = _sandbox_report(settings)
    if problem:
        raise click.ClickException(problem)
    click.echo("\nOK: the configuration is valid")


def _sandbox_report(settings: Settings) -> str | None:
    """Probe the sandbox layers as the daemon would (a throwaway fork server); print them."""
    import subprocess
    import sys

    from mldropd.sandbox.setup import describe_layers, missing_message

    uid = settings.sandbox.uid_base if os.getuid() == 0 else None
    done = subprocess.run(
        [sys.executable, "-m", "mldropd.sandbox.probe", *([str(uid)] if uid else [])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        return f"the sandbox probe failed: {done.stderr.strip()[-500:]}"
    found = json.loads(done.stdout)
    click.echo("\n# sandbox layers on this machine (what model code is confined by)")
    for line in describe_layers(found, settings.sandbox.require):
        click.echo(f"#   {line}")
    missing = [k for k in settings.sandbox.require if not found.get(k, {}).get("available")]
    return missing_message(missing, found) if missing else None


from mldropd.cli_run import register as register_run  # noqa: E402  (run)

register_run(main)

from mldropd.cli_store import register  # noqa: E402  (store check, users set-quota)

register(main)

from mldropd.cli_ops import register as register_ops  # noqa: E402  (backup, restore)

register_ops(main)

from mldropd.cli_users import register as register_users  # noqa: E402  (users ..., audit)

register_users(main)

if __name__ == "__main__":
    main()
