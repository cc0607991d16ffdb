"""An edge → shield chain of cache nodes in front of any origin URL, on loopback ports.

No content classes are configured, so every response falls in the default class, which
follows the origin's own caching headers: the chain behaves as a general shared HTTP cache.
Two ways to run the nodes: in-process uvicorn threads (fast; the default) or
``python -m edgeproxy serve`` subprocesses (the production server options).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from edgeproxy.cache import create_app
from edgeproxy.config import CacheConfig, Config, FreeSpace, load_config
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.server import create_node_app, node_app
from tests.servers import ServerThread, free_port, serve
from tests.static_origins import stop_process, wait_listening

Mode = Literal["thread", "process"]


def chain_config(directory: Path, **cache: Any) -> Config:
    """Defaults, data under ``directory``, no content classes, ``cache`` settings applied."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(directory),
                                    "EDGEPROXY_LOG_LEVEL": "warning"})
    return config.replace(content_classes=(),
                          cache=dataclasses.replace(CacheConfig(), **cache))


def edge_config(directory: Path, upstream: str, extra: str = "") -> Config:
    """An edge's config file under ``directory`` (data there, node name ``edge-1``, in front
    of ``upstream``; ``extra``: more YAML lines), loaded as ``edgeproxy serve`` loads it."""
    path = directory / "config.yaml"
    path.write_text(f"data_dir: {directory / 'var'}\n"
                    f"edge: {{upstream: '{upstream}', node_name: edge-1}}\n{extra}")
    return load_config(path)


def serve_edge(config: Config, **options: Any) -> Any:
    """The edge of ``config`` as ``edgeproxy serve`` runs it (its wrappers, the guarded
    protocol, no proxy headers: the fast lane is there), on a thread; ``options``: uvicorn's."""
    return serve(node_app(config, "edge"), proxy_headers=False,
                 **uvicorn_http_options(config.http_limits), **options)


class Chain:
    """Client → edge → shield → origin; ``get``/``request`` talk to the edge."""

    def __init__(self, origin_url: str, directory: Path, mode: Mode = "thread", *,
                 workers: int = 1, admin_token: str = "", access_log: bool = True,
                 **cache: Any) -> None:
        self.origin_url = origin_url.rstrip("/")
        self.mode = mode
        self.workers = workers  # per node, in "process" mode
        self.admin_token = admin_token  # in "process" mode
        self.access_log = access_log  # in "process" mode (off: as the benchmarks run nodes)
        self.config = chain_config(directory, **cache)
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._threads: list[ServerThread] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self.shield_url = ""
        self.edge_url = ""
        self.http = httpx.Client(timeout=20)

    def start(self) -> Chain:
        """Start the shield, then the edge in front of it."""
        if self.mode == "thread":
            shield = ServerThread(create_app(self.config, "shield", upstream=self.origin_url))
            edge = ServerThread(create_app(self.config, "edge", upstream=shield.url))
            self._threads = [shield, edge]
            shield.thread.start()  # both start at once; start() below waits for each
            edge.start()
            self._wait_started(shield)
            self.shield_url, self.edge_url = shield.url, edge.url
        else:
            self._start_processes()
        return self

    @staticmethod
    def _wait_started(server: ServerThread) -> None:
        deadline = time.monotonic() + 10
        while not server.server.started:
            if not server.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"node on port {server.port} did not start")
            time.sleep(0.01)

    def _start_processes(self) -> None:
        for attempt in range(3):
            try:
                self._launch_processes()
                return
            except RuntimeError:
                # another test took a port between free_port and the node's bind: the node
                # refuses to share it and exits (`workers.claim_port`); try other ports
                for proc in self._procs:
                    stop_process(proc, group=True)
                self._procs = []
                if attempt == 2:
                    raise

    def _launch_processes(self) -> None:
        ports = {"shield": free_port(), "edge": free_port()}
        self.shield_url = f"http://127.0.0.1:{ports['shield']}"
        self.edge_url = f"http://127.0.0.1:{ports['edge']}"
        settings = {
            "data_dir": str(self.config.data_dir), "log_level": "warning",
            "content_classes": [],
            "cache": {f.name: _yaml_value(getattr(self.config.cache, f.name))
                      for f in dataclasses.fields(CacheConfig)},
            "shield": {"port": ports["shield"], "upstream": self.origin_url,
                       "workers": self.workers},
            "edge": {"port": ports["edge"], "upstream": self.shield_url,
                     "workers": self.workers},
            "admin_token": self.admin_token,
            "log": {"access": "on" if self.access_log else "off"},
        }
        path = self.directory / "chain.yaml"
        path.write_text(yaml.safe_dump(settings))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        for role in ("shield", "edge"):
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgeproxy", "serve", "--role", role,
                 "--config", str(path), "--parent-pid", str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, start_new_session=True)
            self._procs.append(proc)
            wait_listening(ports[role], proc, f"edgeproxy {role}")

    def stop(self) -> None:
        """Stop the edge first, then the shield."""
        self.http.close()
        for server in self._threads:
            server.server.should_exit = True  # both drain at once
        for server in reversed(self._threads):
            server.thread.join(timeout=10)
        for proc in reversed(self._procs):
            stop_process(proc, group=True)

    def url(self, target: str) -> str:
        """The edge URL of ``target`` (a path with optional query)."""
        return self.edge_url + target

    def request(self, method: str, target: str, **kwargs: Any) -> httpx.Response:
        """Send ``method target`` to the edge."""
        return self.http.request(method, self.url(target), **kwargs)

    def get(self, target: str, **kwargs: Any) -> httpx.Response:
        """GET ``target`` from the edge."""
        return self.request("GET", target, **kwargs)


def _yaml_value(value: Any) -> Any:
    """A setting as the config file spells it (a `FreeSpace` as ``"5%, 256MiB"``)."""
    return str(value) if isinstance(value, FreeSpace) else value


@contextmanager
def guarded_nodes(config: Config, upstream: str, *,
                  shield: bool) -> Iterator[tuple[str, str | None]]:  # fmt: skip
    """An edge in front of ``upstream``, through a shield when ``shield``, each node as
    `edgeproxy serve` builds it (request guard, head limits) in a uvicorn thread; yields the
    edge's URL and the shield's (None without one)."""
    options = uvicorn_http_options(config.http_limits)
    with ExitStack() as nodes:
        shield_url = None
        if shield:
            app = create_node_app(config, "shield", upstream=upstream)
            upstream = shield_url = nodes.enter_context(serve(app, **options)).url
        edge = nodes.enter_context(serve(create_node_app(config, "edge", upstream=upstream),
                                         **options))  # fmt: skip
        yield edge.url, shield_url
