"""Nodes as real `edgeproxy serve` subprocesses, for tests of signals, workers, TLS and logs."""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


class NodeProcess:
    """One ``python -m edgeproxy serve --role ROLE`` with stdout and stderr kept in files
    next to the config (``ROLE.out``, ``ROLE.err``)."""

    def __init__(self, config: Path, role: str, url: str, *, upstream: str | None = None,
                 verify: ssl.SSLContext | bool = True) -> None:  # fmt: skip
        self.config, self.role, self.url = config, role, url
        self.upstream = upstream
        self.verify = verify
        self.out = config.parent / f"{role}.out"
        self.err = config.parent / f"{role}.err"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20) -> NodeProcess:
        """Start the node and wait until ``/healthz`` answers 200."""
        command = [sys.executable, "-m", "edgeproxy", "--config", str(self.config), "serve",
                   "--role", self.role]
        if self.upstream:
            command += ["--upstream", self.upstream]
        with self.out.open("ab") as out, self.err.open("ab") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                r = httpx.get(self.url + "/healthz", timeout=1, verify=self.verify)
                if r.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"{self.role} did not start:\n{self.err.read_text()}")

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's main process."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code, waiting up to ``timeout`` seconds (TimeoutExpired otherwise)."""
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if the node is still there after 15 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()
