"""A whole local stack (origin, shield, edge) as child processes: the engine of `edgeproxy up`.

Each node runs as ``python -m edgeproxy serve --role X`` in its own session, so a Ctrl-C in the
terminal reaches only the parent, which then stops the nodes in order (edge, shield, origin):
SIGTERM to each node's process group, SIGKILL after a grace period. Every node is also told
the parent's PID and exits by itself if the parent vanishes without cleaning up (SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

import httpx

from ..config import Config, load_config
from ..errors import EdgeProxyError
from ..server import ENV_CONFIG, ROLES, config_env, listen_address

TAIL_LINES = 20


class StackError(EdgeProxyError):
    """A node of the stack failed to start, or died while the stack was running."""


@dataclass
class Node:
    """One running node: its role, the URL clients use, and the child process."""

    role: str
    url: str
    health_url: str
    process: subprocess.Popen[bytes]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The PID of the node's `serve` process (its process-group leader)."""
        return self.process.pid

    def last_output(self) -> str:
        """The node's last output lines, indented, for error messages."""
        lines = list(self.tail) or ["(no output)"]
        return "\n".join("    " + line for line in lines)


def _connect_host(host: str) -> str:
    # A wildcard bind address is not something to connect to; loopback reaches it.
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)


def _url(host: str, port: int, tls: bool = False) -> str:
    host = _connect_host(host)
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


class Stack:
    """Start origin, shield and edge from one config file; stop them all, always.

    Use as a context manager: ``with Stack("config.yaml") as stack: stack.urls["edge"]``.
    ``echo`` is a text stream that receives every node's output prefixed by its role; the last
    `TAIL_LINES` lines of each node are kept either way for error messages.
    """

    def __init__(self, config_path: str | os.PathLike[str] | None = None, *,
                 echo: IO[str] | None = None, startup_timeout: float = 30.0,
                 grace: float = 10.0) -> None:  # fmt: skip
        self.config_path = str(Path(config_path).resolve()) if config_path is not None else None
        self.config: Config = load_config(self.config_path, env=config_env())
        self.echo = echo
        self.startup_timeout = startup_timeout
        self.grace = grace
        self.nodes: list[Node] = []
        self._echo_lock = threading.Lock()

    # --- public surface ---------------------------------------------------------------------

    @property
    def urls(self) -> dict[str, str]:
        """Base URL of each running node, by role."""
        return {node.role: node.url for node in self.nodes}

    @property
    def pids(self) -> dict[str, int]:
        """PID of each running node, by role."""
        return {node.role: node.pid for node in self.nodes}

    def start(self) -> Stack:
        """Start all three nodes and wait until each answers ``GET /healthz`` with 200."""
        if self.nodes:
            raise StackError("the stack is already running")
        for role in ROLES:
            host, port = listen_address(self.config, role)
            if port == 0:
                raise StackError(f"{role}.port is 0; `edgeproxy up` needs fixed ports")
            if _port_in_use(host, port):
                raise StackError(f"{role}: port {port} on {host} is already in use")
        try:
            for role in ROLES:
                self.nodes.append(self._spawn(role))
            self._wait_all()
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self) -> list[str]:
        """One line per running node: role, URL and PID."""
        return [f"  {n.role:<7} {n.url}  (pid {n.pid})" for n in self.nodes]

    def poll(self) -> Node | None:
        """The first node that has exited, if any."""
        return next((n for n in self.nodes if n.process.poll() is not None), None)

    def wait(self, interval: float = 0.2) -> Node:
        """Block until some node exits and return it (signals interrupt as usual)."""
        while True:
            dead = self.poll()
            if dead is not None:
                return dead
            time.sleep(interval)

    def stop(self) -> None:
        """Stop every node: SIGTERM, then SIGKILL after the grace period. Idempotent."""
        # One at a time, edge first: a node drains its in-flight requests on SIGTERM, and those
        # may still need the tier behind it.
        for node in reversed(self.nodes):
            # Signalled even if the leader already died: its uvicorn workers may live on, and
            # the group ID cannot be reused while any member of the group exists.
            _signal_group(node.process, signal.SIGTERM)
            try:
                node.process.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                _signal_group(node.process, signal.SIGKILL)
                node.process.wait()
            _sweep_group(node.process, timeout=min(self.grace, 2.0))
        for node in self.nodes:
            if node.reader is not None:
                node.reader.join(timeout=2)
                if node.reader.is_alive():
                    # Some stray process still holds the pipe; closing it under the blocked
                    # reader would deadlock on the file's lock, so leave it to the daemon thread.
                    continue
            if node.process.stdout is not None:
                node.process.stdout.close()
        self.nodes = []

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        try:
            self.stop()
        except KeyboardInterrupt:
            # A second Ctrl-C/SIGTERM during the stop must not leave children behind.
            self.stop()
            raise

    # --- internals --------------------------------------------------------------------------

    @staticmethod
    def _serve(role: str, config_path: str | None) -> list[str]:
        """The command line of one node that exits with this process."""
        cmd = [sys.executable, "-m", "edgeproxy", "serve", "--role", role,
               "--parent-pid", str(os.getpid())]  # fmt: skip
        return [*cmd, "--config", config_path] if config_path is not None else cmd

    def _command(self, role: str) -> list[str]:
        cmd = self._serve(role, self.config_path)
        # An empty upstream in the file means "the next tier of this stack".
        if role == "shield" and not self.config.shield.upstream:
            cmd += ["--upstream", self.config.origin.base_url]
        if role == "edge" and not self.config.edge.upstream:
            cmd += ["--upstream", _url(*listen_address(self.config, "shield"),
                                       tls=bool(self.config.shield.tls.cert))]
        return cmd

    def _spawn(self, role: str) -> Node:
        host, port = listen_address(self.config, role)
        tls = bool(self.config.role_section(role).tls.cert)
        url = self.config.origin.base_url if role == "origin" else _url(host, port, tls)
        return self._launch(role, self._command(role), url, _url(host, port, tls) + "/healthz")

    def _launch(self, name: str, command: list[str], url: str, health_url: str) -> Node:
        """Start one node (in its own session) and the thread that reads its output."""
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"  # log lines must reach us as they happen
        if "--config" not in command:
            env.pop(ENV_CONFIG, None)  # the child must fall back to defaults like we did
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        node = Node(name, url, health_url, process)
        node.reader = threading.Thread(target=self._drain, args=(node,), daemon=True,
                                       name=f"edgeproxy-{name}-output")  # fmt: skip
        node.reader.start()
        return node

    def _wait_all(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        for node in self.nodes:
            self._wait_healthy(node, deadline)

    def _drain(self, node: Node) -> None:
        # Always read the pipe, even without echo: a full pipe would block the child's logging.
        assert node.process.stdout is not None
        for raw in node.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            node.tail.append(line)
            if self.echo is not None:
                with self._echo_lock:
                    self.echo.write(f"[{node.role}] {line}\n")
                    self.echo.flush()

    def _wait_healthy(self, node: Node, deadline: float) -> None:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback checks.
        # verify=False: this only asks our own child on loopback whether it is up, and its
        # certificate may come from a private CA this process was not given.
        with httpx.Client(timeout=1.0, trust_env=False, verify=False) as client:
            while True:
                code = node.process.poll()
                if code is not None:
                    if node.reader is not None:
                        node.reader.join(timeout=2)
                    raise StackError(f"{node.role} exited with code {code} during startup; "
                                     f"last output:\n{node.last_output()}")  # fmt: skip
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(node.health_url).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{node.role} did not answer 200 on {node.health_url} within "
                        f"{self.startup_timeout:g}s; last output:\n{node.last_output()}"
                    )
                time.sleep(0.05)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the node's whole process group (uvicorn workers included), or just the node."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, sig)  # the node leads its own session, so pgid == pid
        elif process.poll() is None:  # pragma: no cover - Windows
            process.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait briefly for what is left of the node's group to exit, then SIGKILL it."""
    if not hasattr(os, "killpg"):  # pragma: no cover - Windows
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(process.pid, 0)  # does any member of the group still exist?
        except (ProcessLookupError, PermissionError):
            return
        if time.monotonic() > deadline:
            _signal_group(process, signal.SIGKILL)
            return
        time.sleep(0.05)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Turn the first SIGINT or SIGTERM into KeyboardInterrupt; ignore repeats while stopping.

    The yielded event is set once a signal arrived, so callers can tell a requested stop from
    a failure.
    """
    requested = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        if requested.is_set():
            return
        requested.set()
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
