"""The servers of one conformance run: the suite's origin and the caches put in front of it.

Every server listens on 127.0.0.1 on a free port and runs in its own process group
(`benchmarks.procs.Managed`), so it is stopped by PID when the run ends, fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..procs import Managed, free_port, python, wait_http

HERE = Path(__file__).resolve().parent

# What each target puts between the test client and the suite's origin.
TARGETS = {
    "chain": "edgeproxy edge → edgeproxy shield → origin (the product's two tiers)",
    "edge": "edgeproxy edge → origin (one tier)",
    "nginx": "nginx proxy_cache → origin (the suite's own nginx config)",
    "origin": "no cache: the client talks to the origin (what 'no caching at all' scores)",
}

# The suite's nginx setup (docker/nginx/nginx.conf in cache-tests), on loopback ports.
NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy-tmp;
    fastcgi_temp_path {work}/nginx-fastcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    proxy_cache_path {work}/nginx-cache levels=1:2 keys_zone=my-cache:8m max_size=1000m
                     inactive=600m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{origin_port};
            proxy_cache my-cache;
            proxy_cache_revalidate on;
            proxy_http_version 1.1;
        }}
    }}
}}
"""


def edgeproxy_config(work: Path, ports: dict[str, int], origin_url: str,
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The generated edgeproxy config: a general shared cache in front of any HTTP origin.

    No content classes, so every path falls in the default class, which follows the origin's
    headers. Everything else keeps edgeproxy's defaults, as a user would run it (among them
    ``cache.stale_if_error: 1d``: stale copies are served when the upstream fails); change any
    key with ``--set``.
    """
    config: dict[str, Any] = {
        "data_dir": str(work / "edgeproxy"),
        "log_level": "warning",
        "content_classes": [],
        "shield": {"host": "127.0.0.1", "port": ports["shield"], "upstream": origin_url,
                   "workers": 1},
        "edge": {"host": "127.0.0.1", "port": ports["edge"],
                 "upstream": f"http://127.0.0.1:{ports['shield']}", "workers": 1},
    }
    for item in overrides:
        apply_override(config, item)
    return config


def apply_override(config: dict[str, Any], item: str) -> None:
    """``cache.stale_if_error=1d``: set one (dotted) key; the value is read as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
    *parents, leaf = key.split(".")
    target = config
    for name in parents:
        target = target.setdefault(name, {})
    target[leaf] = yaml.safe_load(raw) if raw else ""


@dataclass
class Stack:
    """The origin and the caches of one target; ``base`` is where the client connects."""

    target: str
    base: str = ""
    procs: list[Managed] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def _clean_env() -> dict[str, str]:
    # edgeproxy reads every EDGEPROXY_* variable as a setting; none of the caller's may leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}


def _wait_tcp(port: int, proc: Managed, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.last_output()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} is not listening on {port}:\n{proc.last_output()}")


def start_origin(suite: Path, work: Path) -> tuple[Managed, str]:
    """The suite's test server (``test-engine/server/server.mjs``), bound to loopback."""
    port = free_port()
    env = _clean_env() | {"npm_config_protocol": "http", "npm_config_port": str(port),
                          "npm_config_pidfile": str(work / "origin.pid")}
    argv = ["node", "--import", (HERE / "loopback.mjs").as_uri(),
            str(suite / "test-engine" / "server" / "server.mjs")]
    proc = Managed("cache-tests origin", argv, work / "origin.log", env=env, cwd=suite)
    _wait_tcp(port, proc)
    return proc, f"http://127.0.0.1:{port}"


def _edgeproxy(role: str, upstream: str, config_path: Path, work: Path) -> Managed:
    argv = [python(), "-m", "edgeproxy", "serve", "--role", role, "--upstream", upstream,
            "--config", str(config_path)]
    return Managed(f"edgeproxy {role}", argv, work / f"{role}.log", env=_clean_env())


@contextlib.contextmanager
def running(target: str, suite: Path, work: Path,
            overrides: Sequence[str] = ()) -> Iterator[Stack]:
    """Start the origin and ``target``'s caches; stop them all on exit."""
    work.mkdir(parents=True, exist_ok=True)
    stack = Stack(target)
    try:
        origin, origin_url = start_origin(suite, work)
        stack.procs.append(origin)
        if target == "origin":
            stack.base = origin_url
        elif target in ("chain", "edge"):
            ports = {"edge": free_port(), "shield": free_port()}
            stack.config = edgeproxy_config(work, ports, origin_url, overrides)
            config_path = work / "edgeproxy.yaml"
            config_path.write_text(yaml.safe_dump(stack.config, sort_keys=False))
            edge_upstream = origin_url
            if target == "chain":
                shield = _edgeproxy("shield", origin_url, config_path, work)
                stack.procs.append(shield)
                wait_http(f"http://127.0.0.1:{ports['shield']}/healthz", shield)
                edge_upstream = f"http://127.0.0.1:{ports['shield']}"
            edge = _edgeproxy("edge", edge_upstream, config_path, work)
            stack.procs.append(edge)
            wait_http(f"http://127.0.0.1:{ports['edge']}/healthz", edge)
            stack.base = f"http://127.0.0.1:{ports['edge']}"
        elif target == "nginx":
            nginx, stack.base = _start_nginx(work, origin_url)
            stack.procs.append(nginx)
        else:
            raise ValueError(f"unknown target {target!r}; expected one of {', '.join(TARGETS)}")
        yield stack
    finally:
        for proc in reversed(stack.procs):
            proc.stop()


def _nginx_binary() -> str:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nginx is not installed (apt-get install nginx)")


def _start_nginx(work: Path, origin_url: str) -> tuple[Managed, str]:
    port = free_port()
    origin_port = int(origin_url.rsplit(":", 1)[1])
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, port=port, origin_port=origin_port))
    proc = Managed("nginx", [_nginx_binary(), "-c", str(conf), "-p", str(work)],
                   work / "nginx.log")
    _wait_tcp(port, proc)
    return proc, f"http://127.0.0.1:{port}"
