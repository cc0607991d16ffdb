"""Nodes as real `edgeproxy serve` subprocesses, for tests of signals, workers, TLS, logs and
crashes, and the scriptable test origin as a process of its own (`OriginProcess`)."""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import httpx

from tests.servers import free_port, listens, write_stack_config
from tests.static_origins import stop_process, wait_listening


def edge_config_file(directory: Path, port: int, *, cache: str = "", edge: str = "",
                     log_level: str = "warning") -> Path:
    """An edge's config file in ``directory`` (data there, no access log): ``cache`` and
    ``edge`` are more YAML flow-mapping entries of those sections (``"slice_size: 65536"``)."""
    path = directory / "config.yaml"
    path.write_text(f"data_dir: {directory / 'var'}\nlog_level: {log_level}\n"
                    f"log: {{access: 'off'}}\ncache: {{{cache}}}\n"
                    f"edge: {{port: {port}{', ' + edge if edge else ''}}}\n")
    return path


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
    def port(self) -> int:
        """The port of ``url``."""
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 20) -> NodeProcess:
        """Start the node and wait until ``/healthz`` answers 200."""
        return self.launch().ready(timeout)

    def launch(self) -> NodeProcess:
        """Start the node's process without waiting for it (see `ready`)."""
        command = [sys.executable, "-m", "edgeproxy", "--config", str(self.config), "serve",
                   "--role", self.role]
        if self.upstream:
            command += ["--upstream", self.upstream]
        with self.out.open("ab") as out, self.err.open("ab") as err:
            # a session of its own: `stop` sweeps workers that outlive their supervisor
            self.process = subprocess.Popen(command, stdout=out, stderr=err,
                                            start_new_session=True)
        return self

    def ready(self, timeout: float = 20) -> NodeProcess:
        """Wait until the launched node's ``/healthz`` answers 200."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                r = httpx.get(self.url + "/healthz", timeout=1, verify=self.verify)
                if r.status_code == 200 and listens(self.process.pid, self.port):
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
        """SIGTERM, then SIGKILL if the node is still there after 15 s; then whatever is
        left of its processes (workers that outlived a supervisor killed or crashed)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


def node_process(directory: Path, role: str, upstream: str, *, workers: int = 1) -> NodeProcess:
    """A `NodeProcess` of ``role`` in front of ``upstream`` on a free loopback port, with a
    config of its own in ``directory`` (access log off)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "config.yaml"
    config.write_text(f"data_dir: var\nlog_level: warning\nlog: {{access: 'off'}}\n"
                      f"{role}: {{port: {port}, workers: {workers}}}\n")
    return NodeProcess(config, role, f"http://127.0.0.1:{port}", upstream=upstream)


@contextmanager
def process_stack(directory: Path, extra: str = "",
                  roles: tuple[str, ...] = ("origin", "shield", "edge"),
                  ) -> Iterator[dict[str, NodeProcess]]:  # fmt: skip
    """origin, shield and edge (or ``roles`` of them) as ``edgeproxy serve`` processes, from
    one config on free ports (`write_stack_config`, ``extra`` YAML appended), started at once
    and stopped at the end; yields the nodes by role."""
    path, ports = write_stack_config(directory, extra)
    nodes = {role: NodeProcess(path, role, f"http://127.0.0.1:{ports[role]}") for role in roles}
    try:
        for node in nodes.values():
            node.launch()
        for node in nodes.values():
            node.ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


class OriginProcess:
    """`python -m tests.origins`: a `TestOrigin` in its own process on a fixed port, so a test
    can SIGKILL it and start it again; ``objects`` maps paths to `pattern` (size, seed)."""

    def __init__(self, directory: Path, objects: dict[str, tuple[int, int]],
                 chunk_delay: float = 0.0) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.objects, self.chunk_delay = objects, chunk_delay
        self.log = directory / "test-origin.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OriginProcess:
        """Start the process and wait until it listens."""
        return self.launch().ready()

    def launch(self) -> OriginProcess:
        """Start the process without waiting for it (see `ready`)."""
        specs = [f"{path}={size}:{seed}" for path, (size, seed) in self.objects.items()]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.origins", str(self.port), str(self.chunk_delay),
                 *specs], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        return self

    def ready(self) -> OriginProcess:
        """Wait until the launched process listens."""
        assert self.process is not None
        wait_listening(self.port, self.process, "test origin")
        return self

    def set_chunk_delay(self, seconds: float) -> None:
        """Seconds between 64 KiB body chunks from now on (and after a restart)."""
        self.chunk_delay = seconds
        httpx.put(self.url + "/_test/chunk_delay", content=str(seconds).encode(), timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.process is not None:
            stop_process(self.process)
