"""Static-file servers the project did not write, as origins: nginx and ``python -m http.server``.

Both serve a document root in the test's temporary directory on a loopback port and log every
request to a file, so a test can count what reached the origin.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.servers import free_port, listens

# nginx's access log as one JSON object a line: what a cache sent it and what it answered.
_LOG_FORMAT = (
    "'{\"method\":\"$request_method\",\"target\":\"$request_uri\",\"status\":$status,"
    "\"range\":\"$http_range\",\"if_range\":\"$http_if_range\",\"if_match\":\"$http_if_match\","
    "\"if_none_match\":\"$http_if_none_match\",\"if_modified_since\":\"$http_if_modified_since\"}'"
)

NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    default_type application/octet-stream;
    types {{ text/plain txt; text/html html; }}
    log_format t escape=json {log_format};
    access_log {prefix}/access.log t;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        # Content that never changes under its URL, as a media store serves it.
        location /immutable/ {{ add_header Cache-Control "public, max-age=31536000, immutable"; }}
        # Explicit expiry: Cache-Control max-age and Expires.
        location /expires/ {{ expires 1h; }}
        # Anything else: validators only (ETag, Last-Modified), no explicit freshness.
    }}
}}
"""


def nginx_binary() -> str:
    """The nginx executable (Debian installs it in /usr/sbin, not always on PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        raise RuntimeError("nginx is required for these tests: apt-get install nginx")
    return found


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    """Block until ``proc`` (or a child of it) listens on ``port``; fail if it exits first."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening")
        if listens(proc.pid, port):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


def stop_process(proc: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after a grace period. ``group``: ``proc`` leads a session of its
    own (``start_new_session``), whose leftovers (a node's workers that outlived their
    supervisor: one stuck in a loop did, burning a core for the rest of the run) go too."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


class StaticOrigin:
    """A document root served by a foreign server on a loopback port."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.root = directory / "root"
        self.root.mkdir(parents=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def put(self, name: str, body: bytes, mtime: float | None = None) -> Path:
        """Write ``body`` at ``name`` under the root (``mtime``: its Last-Modified).

        The file is replaced atomically, so the server never serves it half-written.
        """
        path = self.root / name.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(body)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        tmp.replace(path)
        return path

    def requests(self, target: str | None = None,
                 method: str | None = "GET") -> list[dict[str, Any]]:
        """Logged requests (``method``, ``target``, ``status``, ...) for ``target``."""
        raise NotImplementedError

    def count(self, target: str | None = None, method: str | None = "GET") -> int:
        """How many requests for ``target`` reached the server."""
        return len(self.requests(target, method))

    def stop(self) -> None:
        """Stop the server process."""
        if self.proc is not None:
            stop_process(self.proc)

    def _matching(self, entries: list[dict[str, Any]], target: str | None,
                  method: str | None) -> list[dict[str, Any]]:
        return [e for e in entries if (method is None or e["method"] == method)
                and (target is None or e["target"] == target)]


class Nginx(StaticOrigin):
    """nginx from the OS package, run in the foreground with a generated config."""

    def start(self) -> Nginx:
        """Write nginx.conf under the prefix and start nginx on a free port."""
        (self.dir / "tmp").mkdir()
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(prefix=self.dir, root=self.root, port=self.port,
                                          log_format=_LOG_FORMAT))
        self.proc = subprocess.Popen(
            [nginx_binary(), "-p", str(self.dir), "-c", str(conf),
             "-e", str(self.dir / "error.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, "nginx")
        return self

    def requests(self, target: str | None = None,
                 method: str | None = "GET") -> list[dict[str, Any]]:
        log = self.dir / "access.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return self._matching([json.loads(line) for line in lines if line], target, method)


_HTTP_SERVER_LOG = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+" (?P<status>\d+)')


class HttpServer(StaticOrigin):
    """``python -m http.server``: HTTP/1.0, Last-Modified only, no ranges, no ETag."""

    def start(self) -> HttpServer:
        """Start the server; its request log goes to a file next to the root."""
        self._log = (self.dir / "http.server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", str(self.root)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log)
        wait_listening(self.port, self.proc, "python -m http.server")
        return self

    def stop(self) -> None:
        super().stop()
        self._log.close()

    def requests(self, target: str | None = None,
                 method: str | None = "GET") -> list[dict[str, Any]]:
        text = (self.dir / "http.server.log").read_text(errors="replace")
        entries = [{**m.groupdict(), "status": int(m["status"])}
                   for m in _HTTP_SERVER_LOG.finditer(text)]
        return self._matching(entries, target, method)
