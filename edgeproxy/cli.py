"""The ``edgeproxy`` command: run nodes or a whole stack, upload and download media, a demo.

Every error edgeproxy raises on purpose ends as one line on stderr: ``edgeproxy: config error:
...`` with exit status 2 for a bad configuration, ``edgeproxy: error: ...`` with 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from .config import Config, load_config, parse_duration
from .errors import ClientError, ConfigError, EdgeProxyError
from .server import ENV_CONFIG, ROLES, config_env

DEFAULT_CONFIG_FILE = "config.yaml"
ENV_TOKEN = "EDGEPROXY_TOKEN"


class _Group(click.Group):
    """A group that turns edgeproxy's errors into one-line messages and exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"edgeproxy: config error: {exc}", err=True)
            ctx.exit(2)
        except ClientError as exc:
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


def resolve_config_path(explicit: str | None) -> str | None:
    """``--config``, else ``$EDGEPROXY_CONFIG``, else ``./config.yaml`` if present, else None."""
    if explicit:
        return explicit
    if os.environ.get(ENV_CONFIG):
        return os.environ[ENV_CONFIG]
    return DEFAULT_CONFIG_FILE if Path(DEFAULT_CONFIG_FILE).is_file() else None


def _config_path(ctx: click.Context, local: str | None) -> str | None:
    group_value: str | None = ctx.find_root().params.get("config_path")
    return resolve_config_path(local or group_value)


def _load(ctx: click.Context, local: str | None) -> tuple[Config, str | None]:
    path = _config_path(ctx, local)
    return load_config(path, env=config_env()), path


_config_option = click.option(
    "--config", "config_path", metavar="FILE", default=None,
    help="Config file (default: $EDGEPROXY_CONFIG, else ./config.yaml, else built-in defaults).",
)  # fmt: skip


@click.group(cls=_Group)
@_config_option
def cli(config_path: str | None) -> None:
    """edgeproxy: a self-hostable CDN for end-to-end-encrypted media."""


@cli.command()
@_config_option
@click.pass_context
def up(ctx: click.Context, config_path: str | None) -> None:
    """Start origin, shield and edge on this machine; stop them all on Ctrl-C or SIGTERM."""
    from .stack import Stack, stop_on_signals

    path = _config_path(ctx, config_path)
    dead = None
    with stop_on_signals():
        try:
            with Stack(path, echo=sys.stderr) as stack:
                click.echo("edgeproxy: stack is up")
                for role, url in stack.urls.items():
                    click.echo(f"  {role:<7} {url}  (pid {stack.pids[role]})")
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


@cli.command()
@click.option("--role", type=click.Choice(ROLES), required=True, help="Which node to run.")
@click.option("--upstream", metavar="URL", default=None,
              help="Override the upstream of an edge or shield.")  # fmt: skip
@click.option("--parent-pid", type=int, default=None, hidden=True)
@_config_option
@click.pass_context
def serve(ctx: click.Context, role: str, upstream: str | None, parent_pid: int | None,
          config_path: str | None) -> None:  # fmt: skip
    """Run one node in the foreground."""
    from .server import exit_with_parent, run_node

    config, path = _load(ctx, config_path)
    if upstream is not None and role == "origin":
        raise click.UsageError("--upstream applies to edge and shield only")
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
@_config_option
@click.pass_context
def upload(ctx: click.Context, file: Path, mimetype: str | None, api: str | None,
           token: str | None, conversation_id: str | None, retries: int, out: Path | None,
           config_path: str | None) -> None:  # fmt: skip
    """Encrypt FILE, upload it (resuming after dropped connections), and print the message
    payload (JSON) a receiver needs."""
    from .client import MediaClient

    if api is None:
        api = _load(ctx, config_path)[0].origin.base_url
    with MediaClient(api, token=token, retries=retries) as client:
        payload = client.upload(file, mimetype=mimetype, conversation_id=conversation_id)
    text = json.dumps(payload, indent=2)
    if out is not None:
        part = out.with_name(out.name + ".part")
        part.write_text(text + "\n")
        part.replace(out)
    click.echo(text)


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
@_config_option
@click.pass_context
def token(ctx: click.Context, user: str, ttl: float, config_path: str | None) -> None:
    """Print a development JWT for USER, signed with the config's auth.jwt_secret (HS256).

    Use it as `edgeproxy upload --token` or export EDGEPROXY_TOKEN. Production tokens come from
    your own identity service (HS256 with the shared secret, or RS256).
    """
    from .auth import mint_token

    config = _load(ctx, config_path)[0]
    if not config.auth.jwt_secret:
        raise ConfigError("auth.jwt_secret is empty: this config only verifies RS256 tokens, "
                          "which edgeproxy cannot sign")  # fmt: skip
    click.echo(mint_token(config.auth.jwt_secret, user, ttl=ttl))


def _parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    start, sep, end = value.partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(end) < int(start):
        raise click.BadParameter(f"expected START-END (inclusive, bytes), got {value!r}",
                                 param_hint="--range")  # fmt: skip
    return int(start), int(end)


@cli.command()
@click.argument("payload_file", metavar="PAYLOAD.json", type=click.File("r"))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the plaintext.")  # fmt: skip
@click.option("--range", "range_", metavar="START-END", default=None,
              help="Only these plaintext bytes (inclusive), fetched with an HTTP Range.")
@click.option("--cdn", metavar="URL", default=None,
              help="Fetch via this node instead of the media_url's host.")  # fmt: skip
def download(payload_file: Any, out: Path, range_: str | None, cdn: str | None) -> None:
    """Fetch the media of PAYLOAD.json ('-' for stdin), verify it, and write the plaintext."""
    from .client import MediaClient

    byte_range = _parse_range(range_)
    try:
        payload = json.load(payload_file)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{payload_file.name} is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"{payload_file.name} does not hold a payload object")
    with MediaClient(cdn or "", cdn_url=cdn) as client:
        result = client.download(payload, out, byte_range=byte_range)
    click.echo(json.dumps({"out": str(out), "bytes": result.bytes_written,
                           "fetched": result.bytes_fetched, "status": result.status,
                           "x_cache": result.x_cache, "url": result.url}))  # fmt: skip


@cli.command()
@_config_option
@click.pass_context
def demo(ctx: click.Context, config_path: str | None) -> None:
    """Start a stack, then encrypt, upload and fetch a sample image through the edge."""
    from .stack import stop_on_signals

    with stop_on_signals():
        try:
            run_demo(_config_path(ctx, config_path))
        except KeyboardInterrupt:
            click.echo("edgeproxy: demo interrupted; stack stopped", err=True)
            ctx.exit(130)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="edgeproxy")


# --- demo ----------------------------------------------------------------------------------


class DemoFailed(EdgeProxyError):
    """A demo step did not produce what it should have."""


def make_sample_image(path: Path, size: tuple[int, int] = (1600, 1200)) -> None:
    """A PNG of gradients plus noise: a few MiB, so that it spans several cache slices."""
    from PIL import Image

    width, height = size
    horizontal = Image.linear_gradient("L").rotate(90).resize(size)
    vertical = Image.linear_gradient("L").resize(size)

    def noise() -> Image.Image:
        return Image.frombytes("L", size, os.urandom(width * height))

    # Noise keeps PNG from compressing the image to nothing; the gradients keep it an image.
    channels = (Image.blend(horizontal, noise(), 0.3), Image.blend(vertical, noise(), 0.3),
                noise())  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.merge("RGB", channels).save(path, "PNG")


def _mib(n: int) -> str:
    return f"{n / 1024**2:.2f} MiB"


def run_demo(config_path: str | None, *, echo: Any = click.echo) -> None:
    """The README's walk-through; raises on the first step that does not check out."""
    import hashlib

    from . import crypto
    from .auth import mint_token
    from .client import MediaClient
    from .stack import Stack

    stack = Stack(config_path)
    if not stack.config.auth.jwt_secret:
        raise DemoFailed("the demo signs its own API token and needs auth.jwt_secret")
    api_token = mint_token(stack.config.auth.jwt_secret, "demo", ttl=3600)
    workdir = stack.config.data_dir / "demo"
    echo(f"1. Starting the stack from {config_path or 'built-in defaults'} ...")
    with stack:
        for role, url in stack.urls.items():
            echo(f"   {role:<7} {url}")
        edge = stack.urls["edge"]

        sample = workdir / "sample.png"
        make_sample_image(sample)
        original = sample.read_bytes()
        echo(f"2. Made a sample image {sample} (1600x1200 PNG, {_mib(len(original))})")

        with MediaClient(stack.urls["origin"], token=api_token, cdn_url=edge) as client:
            payload = client.upload(sample)
            payload_file = workdir / "sample.payload.json"
            payload_file.write_text(json.dumps(payload, indent=2) + "\n")
            blob_size = crypto.enc_length(payload["file_length"])
            echo(f"3. Encrypted on this machine and uploaded: media_id {payload['media_id']}\n"
                 f"   blob {_mib(blob_size)}, sha256 {payload['file_enc_sha256'][:16]}...\n"
                 f"   media_url {payload['media_url']}\n"
                 f"   message payload (key included) in {payload_file}")  # fmt: skip

            for n, expect in ((4, "MISS"), (5, "HIT")):
                out = workdir / f"download-{n}.png"
                result = client.download(payload, out)
                same = out.read_bytes() == original
                echo(f"{n}. Whole download via the edge: {result.bytes_fetched} blob bytes, "
                     f"X-Cache: {result.x_cache}; decrypted file identical: {same}")  # fmt: skip
                if not same:
                    raise DemoFailed(f"{out} differs from {sample}")
                # X-Cache lists each tier, nearest first: "MISS from edge, MISS from shield".
                verdict = (result.x_cache or "").split(",")[0].strip().upper()
                if not verdict.startswith(expect):
                    raise DemoFailed(f"expected the edge to report a {expect}, "
                                     f"got X-Cache {result.x_cache!r}")  # fmt: skip

            start, end = 1000, 99999
            out = workdir / "range.bin"
            result = client.download(payload, out, byte_range=(start, end))
            plan = crypto.plan_range(start, end, payload["file_length"])
            same = out.read_bytes() == original[start : end + 1]
            echo(f"6. Plaintext bytes {start}-{end} via the edge: fetched blob bytes "
                 f"{plan.blob_start}-{plan.blob_end} (chunks {plan.first_chunk}-"
                 f"{plan.last_chunk}), X-Cache: {result.x_cache}; "
                 f"{result.bytes_written} bytes, equal to the original's slice: {same}\n"
                 f"   the same encrypted bytes with curl:\n"
                 f"     curl -r {plan.blob_start}-{plan.blob_end} -o part.enc "
                 f"{result.url}")  # fmt: skip
            if not same:
                raise DemoFailed("the decrypted range differs from the original's slice")
            digest = hashlib.sha256(original).hexdigest()
            if digest != payload["file_sha256"]:
                raise DemoFailed("the payload's file_sha256 is not the original's")
    echo("7. Stack stopped. Demo OK.")


def _register_admin_commands() -> None:
    from .cli_admin import purge, warm

    cli.add_command(purge)
    cli.add_command(warm)


_register_admin_commands()
