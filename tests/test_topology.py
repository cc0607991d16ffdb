"""Regional topologies: the file, the plan (ports, upstreams, backups), the generated node
configs, and `edgeproxy up --topology` over real sockets."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from edgeproxy.cli.topology import describe, load_topology, node_config, plan
from edgeproxy.config import DEV_JWT_SECRET, load_config
from edgeproxy.errors import ConfigError
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port
from tests.test_origin import make_blob, sha
from tests.test_stack import alive, wait_gone

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


def test_the_shipped_example_plans_two_regions() -> None:
    topology = load_topology(ROOT / "topology.yaml")
    nodes = plan(topology)
    assert [n.name for n in nodes] == [
        "origin", "shield-americas-1", "shield-americas-2", "shield-asia-1",
        "edge-americas-1", "edge-americas-2", "edge-asia-1"]  # fmt: skip
    assert [n.port for n in nodes] == list(range(9100, 9107))
    assert topology.config == ROOT / "config.yaml"
    assert topology.data_dir == ROOT / "var" / "topology"


def test_edges_use_their_region_then_the_others_as_backup(tmp_path: Path) -> None:
    path = write(tmp_path, """\
base_port: 20000
regions:
  west: {edges: 1, shields: 2}
  east: {edges: 2, shields: 1}
  far: {edges: 1}
""")
    nodes = {n.name: n for n in plan(load_topology(path))}
    url = {name: n.url for name, n in nodes.items()}
    assert url["origin"] == "http://127.0.0.1:20000"
    assert nodes["shield-east-1"].upstreams == ((url["origin"], False),)
    assert nodes["edge-west-1"].upstreams == (
        (url["shield-west-1"], False), (url["shield-west-2"], False),
        (url["shield-east-1"], True))  # fmt: skip
    assert nodes["edge-east-2"].upstreams == (
        (url["shield-east-1"], False), (url["shield-west-1"], True),
        (url["shield-west-2"], True))  # fmt: skip
    # A region without shields of its own uses everyone's as primaries.
    assert all(not backup for _, backup in nodes["edge-far-1"].upstreams)
    lines = describe(list(nodes.values()), {"edge-west-1": 42})
    assert "  region west" in lines
    west = next(line for line in lines if "edge-west-1" in line)
    assert west.endswith("(pid 42)  -> shield-west-1, shield-west-2; backup shield-east-1")


def test_node_configs_load_and_keep_the_base_settings(tmp_path: Path) -> None:
    path = write(tmp_path, "regions: {a: {edges: 1, shields: 1}, b: {edges: 1, shields: 1}}\n")
    topology = load_topology(path)
    base = {"log_level": "warning", "edge": {"cache_size": "64MiB"},
            "cache": {"slice_size": "1MiB"}}  # fmt: skip
    for node in plan(topology):
        data = node_config(topology, node, base, "http://127.0.0.1:9103")
        cfg = tmp_path / f"{node.name}.yaml"
        cfg.write_text(yaml.safe_dump(data))
        config = load_config(cfg, env={})
        assert config.data_dir == tmp_path / "var" / "topology" / node.name
        assert config.log_level == "warning" and config.public_base_url == "http://127.0.0.1:9103"
        if node.role == "edge":
            section = config.node("edge")
            assert section.port == node.port and section.cache_size == 64 * 1024**2
            assert [(u.url, u.backup) for u in section.upstreams] == list(node.upstreams)
            assert section.upstream == node.upstreams[0][0]
        if node.role == "origin":
            assert config.origin.port == node.port
    assert base == {"log_level": "warning", "edge": {"cache_size": "64MiB"},
                    "cache": {"slice_size": "1MiB"}}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("regions: {}\n", "regions"),
        ("regions: {a: {edges: 1}}\n", "needs a shield"),
        ("regions: {a: {edges: 1, shields: 1, caches: 2}}\n", "regions.a"),
        ("regions: {a: {edges: -1, shields: 1}}\n", "regions.a.edges"),
        ("regions: {a: {edges: 1, shields: 99}}\n", "regions.a.shields"),
        ("regions: {'a b': {shields: 1}}\n", "region name"),
        ("base_port: 80\nregions: {a: {shields: 1}}\n", "base_port"),
        ("port: 1\nregions: {a: {shields: 1}}\n", "unknown key 'port'"),
        ("- a\n", "mapping"),
    ],
)
def test_topology_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_topology(write(tmp_path, text))


def upload(origin: str) -> bytes:
    """Upload and confirm a blob at ``origin``; its bytes."""
    blob = make_blob()
    auth = {"Authorization": "Bearer " + mint_token(DEV_JWT_SECRET, "alice")}
    with httpx.Client(base_url=origin, headers=auth, timeout=10) as http:
        ticket = http.post("/v1/media/upload/request", json={
            "file_size": len(blob), "file_type": "image/jpeg",
            "file_hash": "sha256:" + sha(blob)}).json()  # fmt: skip
        put = http.put(httpx.URL(ticket["upload_url"]).raw_path.decode(), content=blob)
        assert put.status_code == 200, put.text
        done = http.post("/v1/media/upload/confirm",
                         json={"media_id": ticket["media_id"], "file_sha256": sha(blob)})
        assert done.status_code == 200, done.text
    return blob


def test_up_topology_serves_every_node_and_stops_them(tmp_path: Path) -> None:
    base = free_port()
    path = write(tmp_path, f"""\
data_dir: {tmp_path / "var"}
base_port: {base}
regions:
  west: {{edges: 1, shields: 1}}
  east: {{edges: 1, shields: 1}}
""")
    (tmp_path / "config.yaml").write_text("log_level: warning\n")
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "up", "--config",
                                 str(tmp_path / "config.yaml"), "--topology", str(path)],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL)  # fmt: skip
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        while "Press Ctrl-C" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
            time.sleep(0.1)
        text = out.read_text()
        pids = {m[0]: int(m[2]) for m in re.findall(r"([\w-]+)\s+(http://\S+)\s+\(pid (\d+)\)",
                                                   text)}  # fmt: skip
        assert set(pids) == {"origin", "shield-west-1", "shield-east-1", "edge-west-1",
                             "edge-east-1"}  # fmt: skip
        assert "edge-west-1" in text and "-> shield-west-1; backup shield-east-1" in text
        assert {p.pid for p in psutil.Process(proc.pid).children()} == set(pids.values())
        blob = upload(f"http://127.0.0.1:{base}")
        for port in (base + 3, base + 4):  # the edges
            # A miss travels edge -> shield -> origin and back.
            r = httpx.get(f"http://127.0.0.1:{port}/v/t1/{sha(blob)}", timeout=10)
            assert r.status_code == 200 and r.content == blob
            assert r.headers["x-cache"].startswith("MISS from edge")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, err.read_text()
        assert wait_gone(list(pids.values()), timeout=5) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids.values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
