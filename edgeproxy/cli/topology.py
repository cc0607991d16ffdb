"""A regional topology on one machine: `edgeproxy up --topology FILE`.

The file names regions, each with its edges and shields (seed 000: edges in each region, regional
shields in front of one origin store)::

    config: config.yaml      # optional: settings every node starts from (auth, limits, cache)
    data_dir: var/topology   # each node keeps its data (and generated config) under here
    host: 127.0.0.1
    base_port: 9100          # the origin; then every shield, then every edge, one port each
    regions:
      americas: {edges: 2, shields: 2}
      asia: {edges: 1, shields: 1}

Every shield fills from the origin. Every edge lists its region's shields as upstreams (rendezvous
hashing spreads keys over them) and the other regions' shields as ``backup`` upstreams, used
only while all of its own region's are down. Relative paths are relative to the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from ..errors import ConfigError
from .stack import Stack, StackError, _port_in_use

_KEYS = {"config", "data_dir", "host", "base_port", "regions"}
MAX_NODES_PER_REGION = 32


@dataclass(frozen=True)
class Region:
    """One region: how many edges and shields it runs."""

    name: str
    edges: int
    shields: int


@dataclass(frozen=True)
class Topology:
    """A parsed topology file."""

    regions: tuple[Region, ...]
    data_dir: Path
    host: str = "127.0.0.1"
    base_port: int = 9100
    config: Path | None = None


@dataclass(frozen=True)
class PlannedNode:
    """One node of the topology: its name, role, region, port and upstreams."""

    name: str
    role: str
    region: str | None
    url: str
    port: int
    upstreams: tuple[tuple[str, bool], ...] = ()  # (URL, backup)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= \
            MAX_NODES_PER_REGION:  # fmt: skip
        raise ConfigError(f"{key}: expected a count 0-{MAX_NODES_PER_REGION}, got {value!r}")
    return value


def load_topology(path: str | os.PathLike[str]) -> Topology:
    """Read and check a topology file; `ConfigError` naming the key on any mistake."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read topology file {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    base = p.resolve().parent
    regions_data = data.get("regions")
    if not isinstance(regions_data, dict) or not regions_data:
        raise ConfigError("regions: expected a mapping of region name to {edges, shields}")
    regions = []
    for name, spec in regions_data.items():
        key = f"regions.{name}"
        if not isinstance(name, str) or not name.replace("-", "").isalnum():
            raise ConfigError(f"{key}: a region name is letters, digits and '-'")
        if not isinstance(spec, dict) or set(spec) - {"edges", "shields"}:
            raise ConfigError(f"{key}: expected {{edges: N, shields: M}}, got {spec!r}")
        regions.append(Region(name, _count(spec.get("edges", 0), f"{key}.edges"),
                              _count(spec.get("shields", 0), f"{key}.shields")))  # fmt: skip
    if not any(r.shields for r in regions):
        raise ConfigError("regions: at least one region needs a shield")
    for r in regions:
        if r.edges and not r.shields and len(regions) == 1:
            raise ConfigError(f"regions.{r.name}: edges need a shield")
    port = data.get("base_port", 9100)
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65000:
        raise ConfigError(f"base_port: expected a port 1024-65000, got {port!r}")
    host = data.get("host", "127.0.0.1")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"host: expected a host name or address, got {host!r}")
    config = data.get("config")
    if config is not None and not isinstance(config, str):
        raise ConfigError(f"config: expected a path, got {config!r}")
    data_dir = data.get("data_dir", "var/topology")
    if not isinstance(data_dir, str):
        raise ConfigError(f"data_dir: expected a path, got {data_dir!r}")
    return Topology(tuple(regions), base / data_dir, host, port,
                    base / config if config else None)  # fmt: skip


def plan(topology: Topology) -> list[PlannedNode]:
    """Every node in start order (origin, shields, edges), with ports and upstreams."""
    host, port = topology.host, topology.base_port

    def url(p: int) -> str:
        return f"http://{host}:{p}"

    origin = PlannedNode("origin", "origin", None, url(port), port)
    nodes, shields_of = [origin], dict[str, list[str]]()
    port += 1
    for region in topology.regions:
        shields_of[region.name] = []
        for i in range(1, region.shields + 1):
            node = PlannedNode(f"shield-{region.name}-{i}", "shield", region.name, url(port),
                               port, ((origin.url, False),))  # fmt: skip
            nodes.append(node)
            shields_of[region.name].append(node.url)
            port += 1
    for region in topology.regions:
        own = [(u, False) for u in shields_of[region.name]]
        others = [(u, True) for name, urls in shields_of.items() if name != region.name
                  for u in urls]  # fmt: skip
        if not own:  # a region without shields uses the others' as primaries
            others = [(u, False) for u, _ in others]
        for i in range(1, region.edges + 1):
            nodes.append(PlannedNode(f"edge-{region.name}-{i}", "edge", region.name, url(port),
                                     port, tuple(own + others)))  # fmt: skip
            port += 1
    return nodes


def node_config(topology: Topology, node: PlannedNode, base: Mapping[str, Any],
                public_url: str) -> dict[str, Any]:  # fmt: skip
    """The settings of one node: ``base`` with its own data dir, port and upstreams."""
    data = dict(base)
    data["data_dir"] = str(topology.data_dir / node.name)
    data["public_base_url"] = public_url
    section = dict(data.get(node.role) or {})
    section.update(host=topology.host, port=node.port)
    if node.role == "origin":
        data["data_dir"] = str(topology.data_dir / "origin")
    else:
        # `upstream` too, for nodes that predate `upstreams`: their first primary.
        section["upstream"] = node.upstreams[0][0]
        section["upstreams"] = [{"url": u, "backup": b} for u, b in node.upstreams]
    data[node.role] = section
    return data


def describe(nodes: list[PlannedNode], pids: Mapping[str, int] | None = None) -> list[str]:
    """The map: one line per node (URL, PID, where it fills from), grouped by region."""
    by_url = {n.url: n.name for n in nodes}
    width = max(len(n.name) for n in nodes)
    regions = list(dict.fromkeys(n.region for n in nodes))  # None (the origin) first
    lines = []
    for region in regions:
        if region is not None:
            lines.append(f"  region {region}")
        for n in (n for n in nodes if n.region == region):
            pid = f"  (pid {pids[n.name]})" if pids and n.name in pids else ""
            line = f"  {'  ' if region else ''}{n.name:<{width}} {n.url}{pid}"
            primary = [by_url[u] for u, b in n.upstreams if not b]
            backup = [by_url[u] for u, b in n.upstreams if b]
            if primary:
                line += "  -> " + ", ".join(primary)
            if backup:
                line += "; backup " + ", ".join(backup)
            lines.append(line)
    return lines


class TopologyStack(Stack):
    """Every node of a topology as child processes, stopped together (see `Stack`)."""

    def __init__(self, topology_path: str | os.PathLike[str], *,
                 config_path: str | os.PathLike[str] | None = None, echo: IO[str] | None = None,
                 startup_timeout: float = 60.0, grace: float = 10.0) -> None:  # fmt: skip
        self.topology = load_topology(topology_path)
        base_path = self.topology.config or config_path
        super().__init__(base_path, echo=echo, startup_timeout=startup_timeout, grace=grace)
        self.plan = plan(self.topology)
        base: dict[str, Any] = {}
        if base_path is not None:
            base = yaml.safe_load(Path(base_path).read_text()) or {}
        public = next((n.url for n in self.plan if n.role == "edge"), self.plan[0].url)
        self.config_dir = self.topology.data_dir / "configs"
        self.node_configs = {n.name: node_config(self.topology, n, base, public)
                             for n in self.plan}  # fmt: skip

    def start(self) -> TopologyStack:
        """Write each node's config, start every node and wait until each is healthy."""
        if self.nodes:
            raise StackError("the topology is already running")
        for n in self.plan:
            if _port_in_use(self.topology.host, n.port):
                raise StackError(f"{n.name}: port {n.port} on {self.topology.host} is in use")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        try:
            for n in self.plan:
                path = self.config_dir / f"{n.name}.yaml"
                path.write_text(yaml.safe_dump(self.node_configs[n.name], sort_keys=False))
                self.nodes.append(self._launch(n.name, self._serve(n.role, str(path)), n.url,
                                               f"{n.url}/healthz"))  # fmt: skip
            self._wait_all()
        except BaseException:
            self.stop()
            raise
        return self

    def describe(self) -> list[str]:
        """The map of the running topology."""
        return describe(self.plan, self.pids)
