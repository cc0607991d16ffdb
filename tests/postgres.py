"""A throwaway PostgreSQL cluster for tests, from Debian's ``postgresql`` package.

``initdb`` refuses to run as root (CI runs as root), so the cluster then belongs to the
``postgres`` system user the package creates and every server command runs as that user. The
server listens on a free loopback port only, with its socket in the cluster's own directory.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg

from tests.servers import free_port


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin directory (``.ci/run`` installs the package)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))  # fmt: skip
    if not found:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql")
    return Path(found[-1]).parent


def _as_owner(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresCluster:
    """A running cluster; `new_database` gives each test its own empty database."""

    port: int
    user: str
    stop: Callable[[], None]  # stops the server at once (a database gone)
    data: Path | None = None  # the cluster's directory

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Every server process stopped (SIGSTOP) for the block, then resumed: a server that
        hangs, or a host cut off, with its connections open (nothing is refused)."""
        assert self.data is not None
        postmaster = psutil.Process(int((self.data / "postmaster.pid").read_text().split()[0]))
        procs = [postmaster, *postmaster.children(recursive=True)]
        for proc in procs:
            proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            for proc in procs:
                with suppress(psutil.NoSuchProcess):
                    proc.send_signal(signal.SIGCONT)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh database's ``postgresql://`` URL."""
        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@contextmanager
def postgres_cluster(port: int | None = None) -> Iterator[PostgresCluster]:
    """initdb + pg_ctl start on ``port`` (a free loopback one by default); stopped and
    removed afterwards."""
    bindir = pg_bin()
    root = Path(tempfile.mkdtemp(prefix="edgeproxy-pg-"))
    data = root / "data"
    user = "postgres" if os.geteuid() == 0 else (os.environ.get("USER") or "postgres")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = port or free_port()
    subprocess.run(_as_owner([str(bindir / "initdb"), "-D", str(data), "-U", user,
                              "--auth=trust", "--no-sync", "-E", "UTF8"]),
                   check=True, capture_output=True)  # fmt: skip
    options = (f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off")
    subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", options,
                              "-l", str(root / "log"), "-w", "-t", "30", "start"]),
                   check=True, capture_output=True)  # fmt: skip
    def stop() -> None:
        subprocess.run(_as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                  "-w", "stop"]), capture_output=True)  # fmt: skip

    try:
        yield PostgresCluster(port, user, stop, data)
    finally:
        stop()
        shutil.rmtree(root, ignore_errors=True)
