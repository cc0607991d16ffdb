"""Start the servers under test on loopback: bench origin, edgeproxy, nginx, Varnish.

Each ``start_*`` returns a `Server` whose processes are registered with `procs` (stopped on
exit no matter what). Configs are written into the run's temp directory; nothing listens on
anything but 127.0.0.1.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .procs import Managed, free_port, python, wait_http

REPO = Path(__file__).resolve().parent.parent
Headers = Mapping[str, str]


@dataclass
class Server:
    """One server (or chain of servers) under test, as clients see it."""

    name: str
    kind: str  # "edgeproxy" | "nginx" | "varnish"
    url: str
    procs: list[Managed]
    is_hit: Callable[[Headers], bool]
    front: Managed  # the process group clients talk to (sampled for RSS)
    metrics: dict[str, str] = field(default_factory=dict)  # node -> /metrics URL (edgeproxy)
    edge_urls: list[str] = field(default_factory=list)  # every edge of a multi-edge chain

    def stop(self) -> None:
        """Stop every process of this server."""
        for proc in reversed(self.procs):
            proc.stop()

    def cache_header(self, headers: Headers) -> str:
        """The header that tells hit from miss, for reports."""
        for name in ("x-cache", "x-cache-status"):
            if name in headers:
                return f"{name}: {headers[name]}"
        return "(no cache header)"


# --- origin --------------------------------------------------------------------------------


class Origin:
    """The bench origin process and its control API."""

    def __init__(self, workdir: Path, blob_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = Managed("origin", [python(), "-m", "benchmarks.origin", "--port",
                                       str(self.port), "--dir", str(blob_dir)],
                            workdir / "origin.log", cwd=REPO)
        wait_http(self.url + "/_admin/stats", self.proc, timeout=120)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def _post(self, action: str, payload: dict[str, Any] | None = None) -> Any:
        resp = self.client.post(f"/_admin/{action}", json=payload or {})
        resp.raise_for_status()
        return resp.json()

    def blob(self, base: str) -> str:
        """The path of a fixed test blob (``b2k`` ... ``b100m``)."""
        return str(self._post("objects", {"base": base, "count": 0})["paths"][0])

    def fresh(self, base: str, count: int) -> list[str]:
        """Paths of ``count`` new objects, each the size of ``base``, that nobody has cached."""
        return list(self._post("objects", {"base": base, "count": count})["paths"])

    def small_objects(self, lengths: list[int]) -> list[str]:
        """Paths of new small objects of the given lengths."""
        return list(self._post("objects", {"base": "pool", "lengths": lengths})["paths"])

    def stats(self, *, paths: bool = True) -> dict[str, Any]:
        """Per-path request/byte counters (unless ``paths`` is false: the per-path tables grow
        with every object ever served), totals and responses in flight."""
        resp = self.client.get("/_admin/stats" if paths else "/_admin/totals")
        resp.raise_for_status()
        return dict(resp.json())

    def reset(self) -> None:
        """Zero the counters."""
        self._post("reset")

    def throttle(self, mibps: float) -> None:
        """Pace each response body at ``mibps`` MiB/s (0: unthrottled)."""
        self._post("throttle", {"mibps": mibps})

    def wait_idle(self, timeout: float = 60.0) -> bool:
        """Wait until no response is in flight (e.g. a proxy still filling its cache)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats(paths=False)["active"] == 0:
                return True
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        """Stop the origin."""
        self.client.close()
        self.proc.stop()


# --- edgeproxy -----------------------------------------------------------------------------


def _config_of(repo: Path, path: Path, data_dir: Path, edge_port: int, shield_port: int,
               origin_url: str, workers: int) -> None:
    """The node's config as ``repo``'s own benchmarks write it (another commit's keys may
    differ from this one's)."""
    if repo == REPO:
        _edgeproxy_config(path, data_dir, edge_port, shield_port, origin_url, workers)
        return
    script = ("import sys; from pathlib import Path; from benchmarks.deploy import "
              "_edgeproxy_config as c; c(Path(sys.argv[1]), Path(sys.argv[2]), "
              "int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))")
    subprocess.run([python(), "-c", script, str(path), str(data_dir), str(edge_port),
                    str(shield_port), origin_url, str(workers)], cwd=repo, check=True)


def _edgeproxy_config(path: Path, data_dir: Path, edge_port: int, shield_port: int,
                      origin_url: str, workers: int) -> None:
    path.write_text(textwrap.dedent(f"""\
        # Written by benchmarks/deploy.py for one benchmark deployment.
        data_dir: {data_dir}
        log_level: warning
        log: {{access: "off"}}       # as nginx's access_log off in the same run
        origin:
          host: 127.0.0.1
          port: {free_port()}       # not started: the bench origin stands in for it
        shield:
          host: 127.0.0.1
          port: {shield_port}
          upstream: {origin_url}
          cache_size: 8GiB
          workers: {workers}
        edge:
          host: 127.0.0.1
          port: {edge_port}
          upstream: {origin_url}
          cache_size: 8GiB
          workers: {workers}
        cache:
          slice_size: 1MiB
          upstream_timeout: 30s
          fill_wait_timeout: 60s
        """))


def _edgeproxy_hit(headers: Headers) -> bool:
    # "HIT from edge" (a chain lists each tier, nearest first).
    return headers.get("x-cache", "").split(",")[0].strip().upper().startswith("HIT")


def start_edgeproxy(workdir: Path, origin_url: str, *, name: str = "edgeproxy",
                    chain: bool = False, workers: int = 2, edges: int = 1,
                    repo: Path = REPO) -> Server:
    """edgeproxy edge in front of the origin, or ``edges`` edges → one shield → origin.

    ``repo`` is the checkout whose ``edgeproxy`` package runs (another commit's worktree, for
    a baseline measured in the same run).

    Each edge has its own config file (port, data dir); the first is the one clients of
    single-URL tests use, all are in `Server.edge_urls`.
    """
    home = workdir / name
    home.mkdir(parents=True)
    shield_port = free_port()
    procs: list[Managed] = []
    metrics: dict[str, str] = {}
    upstream = origin_url
    if chain:
        shield_url = f"http://127.0.0.1:{shield_port}"
        config = home / "config-shield.yaml"
        _config_of(repo, config, home / "data-shield", free_port(), shield_port, origin_url,
                   workers)
        shield = Managed(f"{name}-shield",
                         [python(), "-m", "edgeproxy", "serve", "--config", str(config),
                          "--role", "shield", "--upstream", origin_url],
                         home / "shield.log", cwd=repo)  # fmt: skip
        procs.append(shield)
        wait_http(shield_url + "/healthz", shield)
        metrics["shield"] = shield_url + "/metrics"
        upstream = shield_url
    urls = []
    for i in range(edges):
        suffix = "" if i == 0 else f"-{i + 1}"
        port = free_port()
        config = home / f"config-edge{suffix}.yaml"
        _config_of(repo, config, home / f"data-edge{suffix}", port, shield_port, origin_url,
                   workers)
        edge = Managed(f"{name}-edge{suffix}",
                       [python(), "-m", "edgeproxy", "serve", "--config", str(config),
                        "--role", "edge", "--upstream", upstream],
                       home / f"edge{suffix}.log", cwd=repo)  # fmt: skip
        procs.append(edge)
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", edge)
        metrics[f"edge{suffix}"] = url + "/metrics"
        urls.append(url)
    front = procs[1] if chain else procs[0]
    return Server(name, "edgeproxy", urls[0], procs, _edgeproxy_hit, front, metrics,
                  edge_urls=urls)


# --- nginx ---------------------------------------------------------------------------------


def nginx_has_slice() -> bool:
    """Whether this nginx build includes ngx_http_slice_module."""
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False)
    return "--with-http_slice_module" in out.stderr + out.stdout


def _nginx_conf(home: Path, port: int, origin_url: str, use_slice: bool) -> str:
    origin_host = origin_url.removeprefix("http://")
    if use_slice:
        cache_rules = """
            slice 1m;
            proxy_cache_key $uri$slice_range;
            proxy_set_header Range $slice_range;"""
    else:
        cache_rules = """
            proxy_cache_key $uri;"""
    return textwrap.dedent(f"""\
        # Written by benchmarks/deploy.py.
        worker_processes 2;
        pid {home}/nginx.pid;
        error_log {home}/error.log warn;
        events {{ worker_connections 4096; }}
        http {{
            access_log off;
            sendfile on;
            # No tcp_nopush: with sendfile it corks ~64 KiB answers for a 40 ms delayed-ACK
            # round on loopback (MTU 64 KiB): ~400 req/s instead of ~30,000. nginx's default.
            tcp_nopush off;
            keepalive_requests 1000000;
            client_body_temp_path {home}/client_temp;
            proxy_temp_path {home}/proxy_temp;
            fastcgi_temp_path {home}/fastcgi_temp;
            uwsgi_temp_path {home}/uwsgi_temp;
            scgi_temp_path {home}/scgi_temp;
            proxy_cache_path {home}/cache levels=1:2 keys_zone=bench:64m max_size=8g
                             inactive=30d use_temp_path=off;
            upstream origin {{
                server {origin_host};
                keepalive 32;
            }}
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    proxy_pass http://origin;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_cache bench;{cache_rules}
                    proxy_cache_valid 200 206 30d;
                    proxy_cache_lock on;
                    proxy_cache_lock_timeout 60s;
                    proxy_cache_lock_age 60s;
                    add_header X-Cache-Status $upstream_cache_status always;
                }}
            }}
        }}
        """)


def start_nginx(workdir: Path, origin_url: str, *, use_slice: bool = False,
                name: str | None = None) -> Server:
    """nginx with proxy_cache (URL-only key), optionally with the slice module; ``origin_url``
    may be another nginx (a two-tier pair)."""
    name = name or ("nginx-slice" if use_slice else "nginx")
    home = workdir / name
    home.mkdir(parents=True)
    home.chmod(0o755)  # workers run as nobody and must reach their cache dirs
    port = free_port()
    conf = home / "nginx.conf"
    conf.write_text(_nginx_conf(home, port, origin_url, use_slice))
    proc = Managed(name, ["nginx", "-p", str(home), "-c", str(conf), "-g", "daemon off;"],
                   home / "stdout.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc)

    def is_hit(headers: Headers) -> bool:
        return headers.get("x-cache-status", "").upper() == "HIT"

    return Server(name, "nginx", url, [proc], is_hit, proc)


# --- Varnish -------------------------------------------------------------------------------

VCL = """\
vcl 4.1;
# Written by benchmarks/deploy.py: URL-only hash, 30-day TTL, streaming, default coalescing.
backend origin {{ .host = "127.0.0.1"; .port = "{port}"; }}

sub vcl_recv {{
    return (hash);
}}

sub vcl_hash {{
    hash_data(req.url);
    return (lookup);
}}

sub vcl_backend_response {{
    set beresp.ttl = 30d;
    set beresp.do_stream = true;
    return (deliver);
}}

sub vcl_deliver {{
    if (obj.hits > 0) {{
        set resp.http.X-Cache = "HIT";
    }} else {{
        set resp.http.X-Cache = "MISS";
    }}
}}
"""


def start_varnish(workdir: Path, origin_url: str, *, storage: str = "malloc,2g",
                  name: str = "varnish") -> Server:
    """varnishd in the foreground (``-F``) with its own ``-n`` work dir; ``origin_url`` may be
    another Varnish (a two-tier pair)."""
    home = workdir / name
    home.mkdir(parents=True)
    home.chmod(0o755)
    port = free_port()
    vcl = home / "bench.vcl"
    vcl.write_text(VCL.format(port=origin_url.rsplit(":", 1)[1]))
    vcl.chmod(0o644)
    argv = ["varnishd", "-F", "-n", str(home / "work"), "-a", f"127.0.0.1:{port}",
            "-T", "none", "-f", str(vcl), "-s", storage]
    proc = Managed(name, argv, home / "stdout.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", proc)

    def is_hit(headers: Headers) -> bool:
        return headers.get("x-cache", "").upper() == "HIT"

    return Server(name, "varnish", url, [proc], is_hit, proc)


# --- tools ---------------------------------------------------------------------------------


def missing_tools() -> list[str]:
    """System binaries the comparison needs but cannot find."""
    return [t for t in ("nginx", "varnishd", "wrk") if shutil.which(t) is None]


def tool_versions() -> dict[str, str]:
    """Versions of the servers and load tools, for the report."""
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        text = (out.stdout + out.stderr).strip().splitlines()
        return text[0] if text else "?"

    return {
        "nginx": first_line(["nginx", "-v"]),
        "varnish": first_line(["varnishd", "-V"]),
        "wrk": first_line(["wrk", "-v"]),
        "cpus": str(os.cpu_count()),
        "python": python_build(),
        "cpu_speed": f"{cpu_calibration():.2f} s",
    }


def python_build() -> str:
    """The interpreter edgeproxy runs on (its speed: `cpu_calibration`)."""
    return f"{platform.python_implementation()} {platform.python_version()}"


def cpu_calibration() -> float:
    """Seconds this interpreter takes for ten million additions in a loop: a yardstick for
    the absolute figures (the sequential miss cost) across machines and interpreter builds
    (the ratios need none). A plain source build of CPython 3.11, as pyenv makes by default,
    took 0.72-0.80 s where the distribution's build of 3.11 took 0.48 s, on one machine."""
    started = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - started
