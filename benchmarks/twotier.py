"""Two-tier deployments, edge → shield → origin, of each server kind, started fresh per cell.

edgeproxy runs as ``serve --role shield`` plus ``serve --role edge`` (``workers`` each, 2 by
default as in the outside measurement); nginx x2 is two proxy_cache instances, the edge's
upstream being the shield; Varnish x2 likewise. Each pair starts with empty caches and is
stopped when its cell is done, so nothing else competes for the CPU while one is measured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .deploy import Headers, Server, start_edgeproxy, start_nginx, start_varnish
from .procs import Managed

KINDS = ("edgeproxy", "nginx", "varnish")
PAIR_STORAGE = "malloc,1g"  # per Varnish tier: the 10,000 Zipf objects take ~260 MiB


@dataclass
class Pair:
    """An edge in front of a shield: clients talk to ``server.url`` (the edge)."""

    kind: str
    server: Server
    tiers: dict[str, Managed]  # "edge" / "shield" -> the tier's process group

    def stop(self) -> None:
        """Stop both tiers (edge first)."""
        self.server.stop()


def start_pair(kind: str, workdir: Path, origin_url: str, *, tag: str,
               workers: int = 2) -> Pair:
    """Start ``kind``'s edge → shield → ``origin_url``; process names start with ``tag``."""
    name = f"{tag}-{kind}"
    if kind == "edgeproxy":
        server = start_edgeproxy(workdir, origin_url, name=name, chain=True, workers=workers)
        shield_proc, edge_proc = server.procs
        return Pair(kind, server, {"edge": edge_proc, "shield": shield_proc})
    if kind == "nginx":
        shield = start_nginx(workdir, origin_url, name=f"{name}-shield")
    elif kind == "varnish":
        shield = start_varnish(workdir, origin_url, storage=PAIR_STORAGE, name=f"{name}-shield")
    else:
        raise ValueError(f"unknown server kind {kind!r}")
    try:
        if kind == "nginx":
            edge = start_nginx(workdir, shield.url, name=f"{name}-edge")
        else:
            edge = start_varnish(workdir, shield.url, storage=PAIR_STORAGE, name=f"{name}-edge")
    except BaseException:
        shield.stop()
        raise
    # procs run shield first, edge last: Server.stop stops the edge first.
    is_hit = _nginx_edge_hit if kind == "nginx" else edge.is_hit
    server = Server(name, kind, edge.url, [shield.front, edge.front], is_hit, edge.front)
    return Pair(kind, server, {"edge": edge.front, "shield": shield.front})


def _nginx_edge_hit(headers: Headers) -> bool:
    # The shield's X-Cache-Status is passed through (and stored) before the edge adds its own.
    return headers.get("x-cache-status", "").split(",")[-1].strip().upper() == "HIT"


@contextlib.contextmanager
def running(kind: str, workdir: Path, origin_url: str, *, tag: str,
            workers: int = 2) -> Iterator[Pair]:
    """A fresh pair for the duration of the block."""
    pair = start_pair(kind, workdir, origin_url, tag=tag, workers=workers)
    try:
        yield pair
    finally:
        pair.stop()
