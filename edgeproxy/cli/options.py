"""The options every ``edgeproxy`` command shares: where the config comes from, and the token."""

from __future__ import annotations

import os
from pathlib import Path

import click

from ..config import Config, load_config
from ..server import ENV_CONFIG, config_env

DEFAULT_CONFIG_FILE = "config.yaml"
ENV_TOKEN = "EDGEPROXY_TOKEN"


def resolve_config_path(explicit: str | None) -> str | None:
    """``--config``, else ``$EDGEPROXY_CONFIG``, else ``./config.yaml`` if present, else None."""
    if explicit:
        return explicit
    if os.environ.get(ENV_CONFIG):
        return os.environ[ENV_CONFIG]
    return DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None


def chosen_config_path(ctx: click.Context, local: str | None) -> str | None:
    group_value: str | None = ctx.find_root().params.get("config_path")
    return resolve_config_path(local or group_value)


def load(ctx: click.Context, local: str | None) -> tuple[Config, str | None]:
    path = chosen_config_path(ctx, local)
    return load_config(path, env=config_env()), path


config_option = click.option(
    "--config", "config_path", metavar="FILE", default=None,
    help="Config file (default: $EDGEPROXY_CONFIG, else ./config.yaml, else built-in defaults).",
)  # fmt: skip
