"""An upstream that is down fails every request, and each failure was logged twice (the fill's
and the answer's): a shield outage wrote 46,000 lines in 40 s, 5,000 a second at the peak. Each
kind is now logged once, then once a window with how many were left out (`quietlog`)."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from tests.chain import chain_config
from tests.servers import free_port, serve


def test_a_down_upstream_is_logged_once_not_once_per_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    caplog.set_level(logging.WARNING)
    app = create_app(chain_config(tmp_path, upstream_backoff=0.0), "edge", upstream=down)
    with serve(app) as edge:
        statuses = [httpx.get(f"{edge.url}/f{i}.bin", timeout=10).status_code
                    for i in range(40)]
    assert statuses == [502] * 40  # (every one answered, with the JSON error)
    lines = [r.getMessage() for r in caplog.records
             if r.name.startswith("edgeproxy") and "upstream" in r.getMessage()]
    assert 1 <= len(lines) <= 4, lines
