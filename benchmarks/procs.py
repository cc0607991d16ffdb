"""Process supervision for benchmark servers: loopback ports, process groups, certain cleanup.

Every server is started in its own session (so its PID is also its process-group id) and
registered here. `stop_all` runs from ``finally`` blocks, from `atexit`, and from SIGINT /
SIGTERM / SIGHUP handlers, so a failed or interrupted run never leaves a server behind. Only
process groups we started are signalled — by their id, never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import httpx

_RUNNING: list[Managed] = []


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Managed:
    """One server process group that we started and will stop."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=cwd, start_new_session=True,
        )
        self.stopped = False
        _RUNNING.append(self)

    @property
    def pid(self) -> int:
        """PID of the top process (also the process-group id)."""
        return self.process.pid

    def alive(self) -> bool:
        """Whether the top process still runs."""
        return self.process.poll() is None

    def last_output(self, limit: int = 3000) -> str:
        """The tail of the process's log."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL it. Once only: a
        group gone since may have had its number reused by another process's."""
        if self.stopped:
            return
        self.stopped = True
        if self in _RUNNING:
            _RUNNING.remove(self)
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (self.alive() or _group_alive(pgid)):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all() -> None:
    """Stop every server still registered, newest first."""
    for proc in reversed(list(_RUNNING)):
        with contextlib.suppress(Exception):
            proc.stop()


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    stop_all()
    # Unwind through the callers' finally blocks, then exit with the conventional status.
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop all servers at interpreter exit and on SIGINT/SIGTERM/SIGHUP."""
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def wait_http(url: str, proc: Managed, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers any HTTP status; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.process.returncode}:\n"
                               f"{proc.last_output()}")
        try:
            httpx.get(url, timeout=2.0)
            return
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {timeout:.0f}s ({last});\n"
                       f"{proc.last_output()}")


def python() -> str:
    """The interpreter running the benchmark (the project's venv)."""
    return sys.executable
