"""What every command shares: the --config option, loading the settings, opening the registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from mldropd import logs
from mldropd.errors import MldropdError
from mldropd.settings import Settings, load_settings

if TYPE_CHECKING:  # the database's libraries load when a command needs them
    from sqlalchemy.engine import Engine

CONFIG_HELP = "Config file (default: $MLDROPD_CONFIG, else ./config.toml)."
config_option = click.option("--config", type=click.Path(dir_okay=False), help=CONFIG_HELP)


def load_config(config: str | None, overrides: dict[str, dict[str, Any]] | None = None) -> Settings:
    """The settings (a broken config file is a CLI error naming the problem), logging set up."""
    try:
        settings = load_settings(config, overrides=overrides)
    except MldropdError as exc:
        raise click.ClickException(f"configuration error: {exc.message}") from None
    logs.configure(settings.server.log_format, settings.server.log_level)
    return settings


def open_registry(settings: Settings) -> Engine:
    """The registry database, brought to the current schema."""
    from mldropd.db import init_db, make_engine

    engine = make_engine(settings.database.path)
    init_db(engine, settings.storage)  # a migration may move the store's files
    return engine
