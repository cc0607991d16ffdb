"""The ``edgeproxy`` command: run nodes or a whole stack, upload and download media, a demo.

Every error edgeproxy raises on purpose ends as one line on stderr: ``edgeproxy: config error:
...`` with exit status 2 for a bad configuration (click's usage errors, such as a bad option
value, exit with 2 too), ``edgeproxy: error: ...`` with 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import httpx

from .. import __version__
from ..config import check_url, parse_duration
from ..errors import ClientError, ConfigError, EdgeProxyError
from ..server import ROLES
from .admin import purge, scrub, warm
from .options import ENV_TOKEN, chosen_config_path, config_option, load
from .storage import storage


def connection_problem(exc: httpx.TransportError) -> str:
    """A network failure in words, with the likely fix (not "status 0")."""
    try:
        url = str(exc.request.url.copy_with(query=None))  # no signature in the message
    except RuntimeError:  # raised without a request
        url = "the server"
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc).rpartition("] ")[2] or "connection failed"
        return (f"cannot connect to {url} ({reason}): is the stack running? "
                "Start it with `edgeproxy up`, or point --api/--cdn/--node at it")
    if isinstance(exc, httpx.TimeoutException):
        return f"{url} did not answer in time ({type(exc).__name__})"
    return f"connection to {url} failed: {exc or type(exc).__name__}"


class _Group(click.Group):
    """A group that turns edgeproxy's errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"edgeproxy: config error: {exc}", err=True)
            ctx.exit(2)
        except httpx.TransportError as exc:
            click.echo(f"edgeproxy: error: {connection_problem(exc)}", err=True)
            ctx.exit(1)
        except httpx.InvalidURL as exc:  # (--api, --cdn, --node, a payload's media_url)
            click.echo(f"edgeproxy: error: not a usable URL: {exc}", err=True)
            ctx.exit(2)
        except ClientError as exc:
            if isinstance(exc.__cause__, httpx.TransportError):
                click.echo(f"edgeproxy: error: {connection_problem(exc.__cause__)}", err=True)
                ctx.exit(1)
            hint = ""
            if exc.status == 401:
                hint = (f" (pass --token or set {ENV_TOKEN}; `edgeproxy token --user NAME` "
                        "prints a development token)")  # fmt: skip
            click.echo(f"edgeproxy: error: {exc}{hint}", err=True)
            ctx.exit(1)
        except (EdgeProxyError, ValueError, OSError) as exc:
            # ValueError: bad payload or range; OSError: unreadable input, unwritable output.
            click.echo(f"edgeproxy: error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, "--version", prog_name="edgeproxy",
                      message="%(prog)s %(version)s")  # fmt: skip
@config_option
def cli(config_path: str | None) -> None:
    """edgeproxy: a self-hostable CDN for end-to-end-encrypted media."""


@cli.command()
@config_option
@click.option("--topology", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A regional topology file: N edges x M shields per region.")  # fmt: skip
@click.pass_context
def up(ctx: click.Context, config_path: str | None, topology: str | None) -> None:
    """Start origin, shield and edge on this machine; stop them all on Ctrl-C or SIGTERM."""
    from .stack import Stack, stop_on_signals

    path = chosen_config_path(ctx, config_path)
    dead = None
    with stop_on_signals():
        try:
            if topology is not None:
                from .topology import TopologyStack

                stack: Stack = TopologyStack(topology, config_path=path, echo=sys.stderr)
            else:
                stack = Stack(path, echo=sys.stderr)
            with stack:
                click.echo("edgeproxy: stack is up")
                for line in stack.describe():
                    click.echo(line)
                click.echo("Press Ctrl-C to stop.")
                sys.stdout.flush()
                dead = stack.wait()
                code = dead.process.returncode
                click.echo(f"edgeproxy: {dead.role} (pid {dead.pid}) exited with code {code}; "
                           f"stopping the stack. Last output:\n{dead.last_output()}",
                           err=True)  # fmt: skip
        except KeyboardInterrupt:
            click.echo("edgeproxy: stopped", err=True)
            if dead is None:  # a stop that was asked for, not one forced by a dead node
                return
    ctx.exit(1)


@cli.command("check-config")
@config_option
@click.pass_context
def check_config(ctx: click.Context, config_path: str | None) -> None:
    """Load and check the config (file and EDGEPROXY_* variables) without starting anything.

    Exit status 0 and one line if it is valid; 2 and the offending key (or variable) if not.
    """
    config, path = load(ctx, config_path)
    ports = ", ".join(f"{role} :{listen_port}" for role, listen_port in (
        ("origin", config.origin.port), ("shield", config.shield.port),
        ("edge", config.edge.port)))  # fmt: skip
    click.echo(f"edgeproxy: config OK: {path or 'built-in defaults'} ({ports})")


@cli.command()
@click.option("--role", type=click.Choice(ROLES), required=True, help="Which node to run.")
@click.option("--upstream", metavar="URL", default=None,
              help="Override the upstream of an edge or shield.")  # fmt: skip
@click.option("--parent-pid", type=int, default=None, hidden=True)
@config_option
@click.pass_context
def serve(ctx: click.Context, role: str, upstream: str | None, parent_pid: int | None,
          config_path: str | None) -> None:  # fmt: skip
    """Run one node in the foreground."""
    from ..server import exit_with_parent, run_node

    config, path = load(ctx, config_path)
    if upstream is not None and role == "origin":
        raise click.UsageError("--upstream applies to edge and shield only")
    if upstream is not None:
        check_url("--upstream", upstream)  # (as the config's upstream is: a ConfigError)
    if parent_pid is not None:
        exit_with_parent(parent_pid)
    run_node(config, role, upstream=upstream, config_path=path)


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--type", "mimetype", metavar="MIME", default=None,
              help="MIME type (default: guessed from the file name).")  # fmt: skip
@click.option("--api", metavar="URL", default=None,
              help="Media API base URL (default: the origin from the config).")  # fmt: skip
@click.option("--token", metavar="JWT", default=None, envvar=ENV_TOKEN, show_envvar=True,
              help="Bearer token (JWT) for the media API.")  # fmt: skip
@click.option("--conversation", "conversation_id", metavar="ID", default=None,
              help="Conversation the media is for (per-conversation rate limit).")  # fmt: skip
@click.option("--retries", type=click.IntRange(0), default=5, show_default=True,
              help="How often to resume the upload after a dropped connection.")  # fmt: skip
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the payload JSON to this file.")  # fmt: skip
@config_option
@click.pass_context
def upload(ctx: click.Context, file: Path, mimetype: str | None, api: str | None,
           token: str | None, conversation_id: str | None, retries: int, out: Path | None,
           config_path: str | None) -> None:  # fmt: skip
    """Encrypt FILE, upload it (resuming after dropped connections), and print the message
    payload (JSON) a receiver needs."""
    from ..client import MediaClient
    from .progress import Progress
    from .stack import stop_on_signals

    # before the upload: the payload holds the key
    if out is not None and not _file_name(out).parent.is_dir():
        raise click.BadParameter(f"no directory {out.parent}", param_hint="--out")
    if api is None:
        api = load(ctx, config_path)[0].origin.base_url
    with stop_on_signals(), Progress(f"upload {file.name}") as bar, \
            MediaClient(api, token=token, retries=retries, progress=bar.update_to) as client:
        payload = client.upload(file, mimetype=mimetype, conversation_id=conversation_id)
    text = json.dumps(payload, indent=2)
    click.echo(text)  # first: the media key must not depend on writing --out
    if out is not None:
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
        with os.fdopen(fd, "w") as part:
            part.write(text + "\n")
        os.replace(name, out)


def _parse_ttl(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if seconds <= 0:
        raise click.BadParameter("must be positive")
    return seconds


@cli.command()
@click.option("--user", required=True, metavar="NAME", help="The token's subject (sub).")
@click.option("--ttl", default="1h", show_default=True, callback=_parse_ttl, metavar="DURATION",
              help="Lifetime: 300, '30m', '7d'.")  # fmt: skip
@config_option
@click.pass_context
def token(ctx: click.Context, user: str, ttl: float, config_path: str | None) -> None:
    """Print a development JWT for USER, signed with the config's auth.jwt_secret (HS256).

    Use it as `edgeproxy upload --token` or export EDGEPROXY_TOKEN. Production tokens come from
    your own identity service (HS256 with the shared secret, or RS256).
    """
    from ..origin.auth import mint_token

    config = load(ctx, config_path)[0]
    if not config.auth.jwt_secret:
        raise ConfigError("auth.jwt_secret is empty: this config only verifies RS256 tokens, "
                          "which edgeproxy cannot sign")  # fmt: skip
    click.echo(mint_token(config.auth.jwt_secret, user, ttl=ttl))


def _digits(text: str) -> bool:
    # ASCII only: str.isdigit() also takes "²" and "٣", which int() then refuses or reads
    return text.isascii() and text.isdigit()


def _file_name(out: Path) -> Path:
    if not out.name or out.name in (".", ".."):  # ("" is "."): nothing to write to
        raise click.BadParameter("needs a file name", param_hint="--out")
    return out


def parse_range(value: str | None, length: int) -> tuple[int, int] | None:
    """``--range`` as inclusive plaintext offsets into a file of ``length`` bytes, with the
    forms of an HTTP byte range (RFC 9110 §14.1.2): ``START-END``, ``START-`` (to the end) and
    ``-N`` (the last N bytes). An END past the file is clamped by the download."""
    if value is None:
        return None
    start, sep, end = value.strip().partition("-")
    problem = None
    if not sep or not (_digits(start) or _digits(end)) or \
            (start and not _digits(start)) or (end and not _digits(end)):
        problem = "not a byte range"
    elif not start:
        if int(end) == 0:
            problem = "a suffix range needs at least one byte"
        else:
            return max(0, length - int(end)), length - 1
    elif end and int(end) < int(start):
        problem = "END is before START"
    elif int(start) >= length:
        problem = f"START is past the end of the {length}-byte file"
    if problem:
        raise click.BadParameter(f"{problem}; expected START-END, START- or -SUFFIX "
                                 f"(inclusive bytes), got {value!r}", param_hint="--range")
    return int(start), int(end) if end else length - 1


@cli.command()
@click.argument("payload_file", metavar="PAYLOAD.json", type=click.File("r"))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the plaintext.")  # fmt: skip
@click.option("--range", "range_", metavar="START-END", default=None,
              help="Only these plaintext bytes (inclusive), fetched with an HTTP Range: "
                   "100-199, 100- (to the end) or -500 (the last 500).")
@click.option("--cdn", metavar="URL", default=None,
              help="Fetch via this node instead of the media_url's host.")  # fmt: skip
@click.option("--retries", type=click.IntRange(0), default=5, show_default=True,
              help="How often to resume the download after a dropped connection or a 502, "
                   "503 or 504.")  # fmt: skip
def download(payload_file: Any, out: Path, range_: str | None, cdn: str | None,
             retries: int) -> None:
    """Fetch the media of PAYLOAD.json ('-' for stdin), verify it, and write the plaintext."""
    from ..client import MediaClient
    from .progress import Progress
    from .stack import stop_on_signals

    _file_name(out)
    try:
        payload = json.load(payload_file)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{payload_file.name} is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{payload_file.name} does not hold a payload object")
    length = payload.get("file_length")
    if range_ is not None and not isinstance(length, int):
        raise ValueError(f"{payload_file.name} has no file_length, which --range needs")
    byte_range = parse_range(range_, length if isinstance(length, int) else 0)
    # SIGTERM as Ctrl-C: the download's temporary files go (they stayed beside --out)
    with stop_on_signals(), Progress(f"download {out.name}") as bar, \
            MediaClient(cdn or "", cdn_url=cdn, retries=retries,
                        progress=bar.update_to) as client:
        result = client.download(payload, out, byte_range=byte_range)
    click.echo(json.dumps({"out": str(out), "bytes": result.bytes_written,
                           "fetched": result.bytes_fetched, "status": result.status,
                           "x_cache": result.x_cache, "url": result.url}))  # fmt: skip


@cli.command()
@config_option
@click.pass_context
def demo(ctx: click.Context, config_path: str | None) -> None:
    """Start a stack, then encrypt, upload and fetch a sample image through the edge."""
    from .demo import run_demo
    from .stack import stop_on_signals

    with stop_on_signals():
        try:
            run_demo(chosen_config_path(ctx, config_path))
        except KeyboardInterrupt:
            click.echo("edgeproxy: demo interrupted; stack stopped", err=True)
            ctx.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="edgeproxy")


cli.add_command(purge)
cli.add_command(warm)
cli.add_command(scrub)
cli.add_command(storage)
