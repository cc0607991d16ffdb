"""A node that cannot start (here: an upstream CA file that holds no certificate) stops with
one line saying why and a non-zero exit, with one worker or several. It started anyway,
``/healthz`` "ok", and answered 500 to every request (uvicorn's default lifespan mode took
the failed start for an app without lifespan support; found from outside)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.nodes import NodeProcess
from tests.servers import free_port


@pytest.mark.parametrize("workers", [1, 2])
def test_a_node_that_cannot_start_stops_and_says_why(tmp_path: Path, workers: int) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: var\nedge: {{port: {port}, workers: {workers}, "
                      f"upstream: 'https://127.0.0.1:9', upstream_tls: {{ca: '{bad}'}}}}\n")
    node = NodeProcess(config, "edge", f"http://127.0.0.1:{port}")
    node.launch()
    try:
        assert node.wait(30) == 3
    finally:
        node.stop()
    err = node.stderr()
    assert "edge cannot start: upstream_tls" in err, err
    assert "Traceback" not in err and "lifespan' protocol appears unsupported" not in err, err
