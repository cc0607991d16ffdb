"""The CLI as an operator meets it: progress bars on a terminal (and silence when piped),
open-ended ranges, and connection errors that say what to do. Real nodes, real sockets, the
CLI as a subprocess; a pseudo-terminal stands in for the operator's screen."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from edgeproxy import cache, origin
from edgeproxy.cli.commands import parse_range
from edgeproxy.config import load_config
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port, serve, write_stack_config

ADMIN = "admin-token-for-the-cli-tests"


@dataclass
class Stack:
    origin: str
    edge: str
    token: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    path, ports = write_stack_config(tmp)
    config = load_config(path, env={"EDGEPROXY_ADMIN_TOKEN": ADMIN})
    with (serve(origin.create_app(config), ports["origin"]) as o,
          serve(cache.create_app(config, "shield"), ports["shield"]),
          serve(cache.create_app(config, "edge"), ports["edge"]) as e):  # fmt: skip
        yield Stack(o.url, e.url, mint_token(config.auth.jwt_secret, "alice"))


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("media") / "notes.zip"
    path.write_bytes(os.urandom(1024**2 + 12_345))  # several 256 KiB PUT chunks
    return path


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}


def run(*args: str, cwd: Path, tty: bool = False,
        timeout: float = 60) -> tuple[int, str, str]:  # fmt: skip
    """Run the CLI; stdout is a pipe, stderr a pipe or (``tty``) a pseudo-terminal."""
    argv = [sys.executable, "-m", "edgeproxy", *args]
    if not tty:
        proc = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr
    leader, follower = pty.openpty()
    # 24 rows, 100 columns: a new pseudo-terminal is 0x0, and a bar fits in no columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    with subprocess.Popen(argv, cwd=cwd, env=env(), stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=follower) as child:  # fmt: skip
        os.close(follower)
        screen = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # EIO: every writer of the terminal is gone
                    break
                if not data:
                    break
                screen += data
            elif child.poll() is not None:
                break
        os.close(leader)
        assert child.stdout is not None
        out = child.stdout.read().decode()
        code = child.wait(timeout=10)
    return code, out, screen.decode("utf-8", "replace")


# --- progress --------------------------------------------------------------------------------


def test_upload_and_download_show_progress_on_a_terminal(stack: Stack, media: Path,
                                                         tmp_path: Path) -> None:  # fmt: skip
    code, out, screen = run("upload", str(media), "--api", stack.origin, "--token",
                            stack.token, "--out", "p.json", cwd=tmp_path, tty=True)  # fmt: skip
    assert code == 0, screen
    assert json.loads(out)["file_length"] == media.stat().st_size  # stdout stays clean JSON
    assert "upload notes.zip: 100%" in screen and "1.01M/1.01M" in screen, screen

    code, out, screen = run("download", "p.json", "--out", "copy.zip", cwd=tmp_path, tty=True)
    assert code == 0, screen
    assert (tmp_path / "copy.zip").read_bytes() == media.read_bytes()
    assert "download copy.zip: 100%" in screen, screen


def test_piped_stderr_gets_no_progress(stack: Stack, media: Path, tmp_path: Path) -> None:
    code, out, err = run("upload", str(media), "--api", stack.origin, "--token", stack.token,
                         "--out", "p.json", cwd=tmp_path)  # fmt: skip
    assert (code, err) == (0, "")
    code, out, err = run("download", "p.json", "--out", "copy.zip", cwd=tmp_path)
    assert (code, err) == (0, "")
    assert json.loads(out)["bytes"] == media.stat().st_size


def test_warm_shows_a_bar_on_a_terminal_and_lines_when_piped(stack: Stack, media: Path,
                                                             tmp_path: Path) -> None:  # fmt: skip
    code, out, _ = run("upload", str(media), "--api", stack.origin, "--token", stack.token,
                       cwd=tmp_path)  # fmt: skip
    path = "/v/t1/" + json.loads(out)["media_url"].rsplit("/", 1)[1]
    missing = "/v/t1/" + "0" * 64
    args = ("warm", path, missing, "--node", stack.edge, "--token", ADMIN)
    code, out, screen = run(*args, cwd=tmp_path, tty=True)
    assert code == 1  # one path failed
    assert "warm: 100%" in screen and "2/2" in screen, screen
    assert f"404 {missing}" in screen and f"200 {path}" not in screen  # only failures listed
    assert json.loads(out)["warmed"][stack.edge] == {"done": 2, "failed": 1}

    code, out, err = run(*args, cwd=tmp_path)
    assert code == 1 and "%" not in err
    assert f"200 {path}" in err and f"404 {missing}" in err


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    # RFC 9110 §14.1.2: first-last, first- (to the end), -suffix (the last N bytes).
    ("0-99", (0, 99)),
    ("100-", (100, 999)),
    ("999-", (999, 999)),
    ("-500", (500, 999)),
    ("-5000", (0, 999)),  # a suffix longer than the file is the whole file
    ("900-5000", (900, 5000)),  # an end past the file is clamped by the download
    (None, None),
])  # fmt: skip
def test_parse_range(value: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(value, 1000) == expected


@pytest.mark.parametrize("value", ["", "-", "9-1", "-0", "1000-", "a-b", "1-2-3", "1", "+1-",
                                   "\u00b2-3", "1-\u0663", "-\u00b9"])  # (digits int() refuses)
def test_parse_range_refusals(value: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_range(value, 1000)


def test_open_ended_and_suffix_ranges(stack: Stack, media: Path, tmp_path: Path) -> None:
    data = media.read_bytes()
    code, out, err = run("upload", str(media), "--api", stack.origin, "--token", stack.token,
                         "--out", "p.json", cwd=tmp_path)  # fmt: skip
    assert code == 0, err
    for value, expected in (("100000-", data[100_000:]), ("-500", data[-500:])):
        code, out, err = run("download", "p.json", "--out", "part.bin", "--range", value,
                             cwd=tmp_path)  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "part.bin").read_bytes() == expected, value
        assert json.loads(out)["status"] == 206


# --- connection errors -----------------------------------------------------------------------


def test_connection_refused_asks_whether_the_stack_runs(tmp_path: Path, media: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    payload = {"media_url": f"{closed}/v/t1/{'ab' * 32}", "media_key": "AAAA",
               "file_sha256": "ab" * 32, "file_length": 3, "type": "image"}  # fmt: skip
    (tmp_path / "p.json").write_text(json.dumps(payload))
    for args in (("upload", str(media), "--api", closed, "--token", "t"),
                 ("download", "p.json", "--out", "x"),
                 ("warm", "/v/t1/x", "--node", closed, "--token", "t"),
                 ("purge", "/v/t1/x", "--node", closed, "--token", "t")):
        code, _out, err = run(*args, cwd=tmp_path)
        assert code == 1, (args, err)
        assert err.startswith(f"edgeproxy: error: cannot connect to {closed}/"), (args, err)
        assert "is the stack running?" in err and "status 0" not in err and " 0 " not in err
        assert "Traceback" not in err and err.count("\n") == 1, (args, err)


@pytest.mark.parametrize("upstream", ["http://", "http://[::1", "http://127.0.0.1:99999",
                                      "ftp://x"])
def test_serve_upstream_is_checked_as_the_configs(tmp_path: Path, upstream: str) -> None:
    """``serve --upstream`` bypassed the config's check: the node started, answering 500 to
    everything. It is the same config error now, naming the option, before any start."""
    code, _out, err = run("serve", "--role", "edge", "--upstream", upstream, cwd=tmp_path,
                          timeout=30)
    assert code == 2 and err.startswith("edgeproxy: config error: --upstream"), err
    assert "Traceback" not in err and err.count("\n") == 1, err


# --- the README's walk-through ---------------------------------------------------------------


def test_readme_by_hand_section_has_a_sample_and_waits_for_the_stack() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Try it by hand", 1)[1].split("\n## ", 1)[0]
    script = section.split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.split("#")[0].strip() for line in script.splitlines()]
    commands = [line for line in lines if line]

    def first(fragment: str) -> int:
        return next(i for i, line in enumerate(commands) if fragment in line)

    # The sample file exists before it is used: `edgeproxy demo` leaves it where the demo
    # writes its work (data_dir/demo, data_dir ./var next to config.yaml).
    assert first("edgeproxy demo") < first("var/demo/sample.png") < first("edgeproxy upload")
    # The upload waits until the nodes answer their health checks.
    assert first("edgeproxy up") < first("/healthz") < first("edgeproxy upload")
    assert "until curl -sf" in commands[first("/healthz")]
    # The library snippet passes the API token.
    snippet = readme.split("from edgeproxy.client import MediaClient", 1)[1].split("```", 1)[0]
    assert re.search(r"MediaClient\([^)]*token=", snippet)
