"""Command line of accounts and the audit log: `mldropd users list | disable | enable |
rotate-token | set-admin | allow-global` and `mldropd audit`.

Registered on the main group by mldropd/cli.py (register(main)); `users add` and
`users set-quota` live in cli.py and cli_store.py. Every change is written to the audit log as
done by `cli:<os user>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from mldropd.cli_common import config_option, load_config, open_registry
from mldropd.errors import MldropdError
from mldropd.settings import Settings


def _do(action: Callable[[], Any]) -> Any:
    """Run an account change; a domain error (no such user, bad name) becomes a CLI error."""
    try:
        return action()
    except MldropdError as exc:
        raise click.ClickException(exc.message) from None


def user_rows(settings: Settings) -> list[dict[str, Any]]:
    """Every user with rights, state, quota in force and active model count, oldest first."""
    from mldropd.services import Services, cli

    users = Services.build(open_registry(settings), settings).users
    return [
        {
            "email": u.email,
            "admin": u.is_admin,
            "disabled": u.disabled,
            "quota": u.quota if u.quota is not None else settings.limits.active_models_per_user,
            "quota_source": "user" if u.quota is not None else "default",
            "active_models": active,
            "created": u.created_at.strftime("%Y-%m-%d %H:%M"),
        }
        for u, active in users.rows(cli())
    ]


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    cells = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    return [
        "  ".join(text.ljust(w) for text, w in zip(line, widths, strict=True)).rstrip()
        for line in [columns, *cells]
    ]


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def users_list(as_json: bool, config: str | None) -> None:
    """List users: email, admin, disabled, quota, active models, created."""
    settings = load_config(config)
    rows = user_rows(settings)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    shown = [
        {
            **r,
            "admin": "yes" if r["admin"] else "",
            "disabled": "DISABLED" if r["disabled"] else "",
            "quota": f"{r['quota']}{'' if r['quota_source'] == 'user' else ' (default)'}",
        }
        for r in rows
    ]
    columns = ["email", "admin", "disabled", "quota", "active_models", "created"]
    for line in _table(shown, columns):
        click.echo(line)


@click.command("disable")
@click.argument("email")
@config_option
def users_disable(email: str, config: str | None) -> None:
    """Disable EMAIL: its token, web sessions and proxy sign-in are refused everywhere."""
    from mldropd.auth import set_disabled

    user = _do(lambda: set_disabled(open_registry(load_config(config)), email, True))
    click.echo(f"disabled {user.email}: its token, web sessions and proxy sign-in are refused")


@click.command("enable")
@click.argument("email")
@config_option
def users_enable(email: str, config: str | None) -> None:
    """Enable EMAIL again (its token works again)."""
    from mldropd.auth import set_disabled

    user = _do(lambda: set_disabled(open_registry(load_config(config)), email, False))
    click.echo(f"enabled {user.email}; its token works again")


@click.command("rotate-token")
@click.argument("email")
@config_option
def users_rotate_token(email: str, config: str | None) -> None:
    """Give EMAIL a new API token, printed as the last line; the old one stops working."""
    from mldropd.auth import rotate_token

    token = _do(lambda: rotate_token(open_registry(load_config(config)), email))
    click.echo(
        f"new API token for {email.strip().lower()} (shown once; the old token and its web "
        "sessions stopped working):"
    )
    click.echo(token)


@click.command("set-admin")
@click.argument("email")
@click.option("--on/--off", required=True, help="Give or take admin rights.")
@config_option
def users_set_admin(email: str, on: bool, config: str | None) -> None:
    """Give (--on) or take (--off) EMAIL's admin rights (admins see every model)."""
    from mldropd.auth import set_admin

    user = _do(lambda: set_admin(open_registry(load_config(config)), email, on))
    click.echo(f"{user.email} is {'now an admin' if on else 'no longer an admin'}")


@click.command("allow-global")
@click.argument("email")
@click.argument("name")
@click.option("--revoke", is_flag=True, help="Refuse NAME again.")
@config_option
def users_allow_global(email: str, name: str, revoke: bool, config: str | None) -> None:
    """Allow the refused pickle global NAME (exact, e.g. posix.getcwd) in EMAIL's uploads."""
    from mldropd.auth import allow_global

    user = _do(lambda: allow_global(open_registry(load_config(config)), email, name, revoke=revoke))
    if revoke:
        click.echo(f"{name} is refused again in uploads by {user.email}")
    else:
        click.echo(
            f"{name} is allowed in uploads by {user.email}; a file refused before must be "
            "uploaded again"
        )


@click.command("audit")
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Events shown."
)
@click.option("--actor", help="Only this actor (an email, or cli:<os user>).")
@click.option("--action", help="Only this action, e.g. model.delete or user.disable.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@config_option
def audit_command(
    limit: int, actor: str | None, action: str | None, as_json: bool, config: str | None
) -> None:
    """Print the audit log, newest first: who did what to which object, and when."""
    from mldropd.services import Services, cli

    settings = load_config(config)
    users = Services.build(open_registry(settings), settings).users
    rows = users.audit(cli(), limit=limit, actor=actor, action=action)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        detail = " ".join(f"{k}={json.dumps(v)}" for k, v in r["detail"].items())
        when = r["at"][:19].replace("T", " ")
        click.echo(f"{when}  {r['actor']}  {r['action']}  {r['target']}  {detail}".rstrip())


def register(main: click.Group) -> None:
    """Add the account commands to `mldropd users`, and `mldropd audit` to main."""
    users = main.commands["users"]
    assert isinstance(users, click.Group)
    for command in (
        users_list,
        users_disable,
        users_enable,
        users_rotate_token,
        users_set_admin,
        users_allow_global,
    ):
        users.add_command(command)
    main.add_command(audit_command)
