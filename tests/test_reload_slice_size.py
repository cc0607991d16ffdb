"""A SIGHUP reload whose config names another ``cache.slice_size``: the node keeps its own
until a restart (its flights cut answers by it, and stored objects carry theirs). The
reloaded size went into new objects' facts while the flights still cut by the old one, so
readers looked for bytes where no slice holds them: complete 206 answers of wrong bytes
(found from outside; a restart on the same data directory was right)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from tests.chain import chain_config
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, serve

BODY = pattern(300_000, seed=93)


def test_a_reloaded_slice_size_waits_for_a_restart(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    origin = TestOrigin()
    origin.put("/v/t1/reload", BODY)
    with serve(origin) as osrv:
        config = chain_config(tmp_path / "edge", slice_size=64 * 1024)
        app = create_app(config, "edge", upstream=osrv.url)
        node = ServerThread(app).start()
        try:
            smaller = config.replace(cache=dataclasses.replace(config.cache,
                                                               slice_size=16 * 1024))
            app.reload(smaller)
            assert "cache.slice_size is 65536 bytes until a restart" in caplog.text
            for first, last in ((70_000, 70_100), (200_000, 260_000), (5, 17_000)):
                for _ in ("miss", "hit"):
                    r = httpx.get(node.url + "/v/t1/reload",
                                  headers={"Range": f"bytes={first}-{last}"})
                    assert r.status_code == 206 and r.content == BODY[first:last + 1], \
                        (first, r.headers.get("x-cache"))
            whole = httpx.get(node.url + "/v/t1/reload")
            assert whole.status_code == 200 and whole.content == BODY
        finally:
            node.stop()
