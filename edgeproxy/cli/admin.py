"""``edgeproxy purge``, ``warm`` and ``scrub``: the admin API for every node of a topology."""

from __future__ import annotations

import json
import os
from typing import Any, TextIO
from urllib.parse import urlsplit

import click

from . import adminclient
from .options import load

ENV_ADMIN_TOKEN = "EDGEPROXY_ADMIN_TOKEN"


def _path_of(item: str) -> str:
    """Accept ``/v/t1/..`` or a whole URL (its path and query are what a node caches)."""
    if item.startswith("/"):
        return item
    parts = urlsplit(item)
    if not parts.path.startswith("/"):
        raise click.BadParameter(f"{item!r} is neither a path nor a URL")
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _nodes_and_token(ctx: click.Context, nodes: tuple[str, ...], token: str | None,
                     config_path: str | None,
                     default_tiers: tuple[str, ...]) -> tuple[list[str], str]:
    config = load(ctx, config_path)[0]
    chosen = list(nodes) or [config.node(t).base_url for t in default_tiers]
    secret = token or os.environ.get(ENV_ADMIN_TOKEN) or config.admin_token
    if not secret:
        raise click.UsageError(f"no admin token: pass --token, set {ENV_ADMIN_TOKEN}, or set "
                               "admin_token in the config")
    return chosen, secret


_node_option = click.option("--node", "nodes", metavar="URL", multiple=True,
                            help="A node to address (repeatable); default: this config's "
                                 "edge and shield (name every node of a larger topology).")
_token_option = click.option("--token", metavar="TOKEN", default=None,
                             help=f"Admin token (default: ${ENV_ADMIN_TOKEN}, else the config's "
                                  "admin_token).")
_config_option = click.option("--config", "config_path", metavar="FILE", default=None,
                              help="Config file.")


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--prefix", default=None, metavar="PATH", help="Purge every key under PATH.")
@_node_option
@_token_option
@_config_option
@click.pass_context
def purge(ctx: click.Context, paths: tuple[str, ...], prefix: str | None, nodes: tuple[str, ...],
          token: str | None, config_path: str | None) -> None:
    """Remove PATHS (or everything under --prefix) from the caches of edge and shield."""
    if not paths and prefix is None:
        raise click.UsageError("name PATHS to purge, or --prefix")
    targets, secret = _nodes_and_token(ctx, nodes, token, config_path, ("edge", "shield"))
    result = adminclient.purge(targets, secret, paths=[_path_of(p) for p in paths],
                               prefix=prefix)
    click.echo(json.dumps({"purged": result}, indent=2))


@click.command()
@click.argument("paths", nargs=-1)
@click.option("--from-file", "list_file", type=click.File("r"), default=None,
              help="Read paths or URLs from a file, one per line ('-' for stdin).")
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@_node_option
@_token_option
@_config_option
@click.pass_context
def warm(ctx: click.Context, paths: tuple[str, ...], list_file: TextIO | None,
         concurrency: int, nodes: tuple[str, ...], token: str | None,
         config_path: str | None) -> None:
    """Prefetch PATHS into the edge (which fills the shield on the way), with progress: a bar
    when stderr is a terminal, else one line per path on stderr."""
    items = list(paths)
    if list_file is not None:
        items += [line.strip() for line in list_file if line.strip()]
    if not items:
        raise click.UsageError("name PATHS to warm, or --from-file")
    from .progress import Progress

    targets, secret = _nodes_and_token(ctx, nodes, token, config_path, ("edge",))
    todo = [_path_of(p) for p in items]
    summaries = {}
    with Progress("warm", total=len(todo) * len(targets), unit="path") as bar:
        for node in targets:
            def progress(item: dict[str, object], node: str = node) -> None:
                # On a terminal the bar counts and only failures get a line; piped, every
                # path gets its line (a log of what was warmed).
                bar.advance()
                if not bar.enabled or item["status"] not in (200, 206):
                    bar.write(f"{node} {item['status']} {item['path']} {item['bytes']} bytes "
                              f"{item.get('x_cache') or ''}".rstrip())

            summaries[node] = adminclient.warm(node, secret, todo, concurrency=concurrency,
                                               on_progress=progress)
    click.echo(json.dumps({"warmed": summaries}, indent=2))
    if any(s.get("failed") for s in summaries.values()):
        ctx.exit(1)


@click.command()
@_node_option
@_token_option
@_config_option
@click.pass_context
def scrub(ctx: click.Context, nodes: tuple[str, ...], token: str | None,
          config_path: str | None) -> None:
    """Re-verify every slice stored by edge and shield against its checksum, and every
    object filled by ranges against its SHA-256; bad ones are dropped (and fetched again when
    next asked for). A bar when stderr is a terminal, else a line per progress report; exits 1
    if anything was bad, like fsck after a repair."""
    from .progress import Progress

    targets, secret = _nodes_and_token(ctx, nodes, token, config_path, ("edge", "shield"))
    summaries = {}
    for node in targets:
        with Progress(f"scrub {node}", unit="slice") as bar:
            def progress(item: dict[str, Any], node: str = node, bar: Progress = bar) -> None:
                if "bad_slice" in item:
                    bad = item["bad_slice"]
                    bar.write(f"{node} bad slice {bad['index']} of {bad['key']}: dropped")
                elif "bad_object" in item:
                    bar.write(f"{node} {item['bad_object']['key']} fails its SHA-256: dropped")
                elif "checked" in item:
                    bar.update_to(item["checked"], item.get("total"))
                    if not bar.enabled:
                        bar.write(f"{node} {item['checked']}/{item.get('total')} slices, "
                                  f"{item.get('bad', 0)} bad")

            summaries[node] = adminclient.scrub(node, secret, on_progress=progress)
            bar.update_to(summaries[node]["done"])
    click.echo(json.dumps({"scrubbed": summaries}, indent=2))
    if any(s.get("bad") or s.get("objects_bad") for s in summaries.values()):
        ctx.exit(1)
