"""The scrub's object pass: objects whose slices came by ranges are hashed whole once all their
slices are stored (issue "Never a wrong byte": a background pass verifies objects whose slices
are all present).

Over real sockets, an edge alone and edge → shield in front of a raw-socket origin
(`tests.foreign.ForeignOrigin`) that serves content-addressed objects (``/v/t1/<sha256>``). A
client asks for each slice by a range, so every tier stores the object slice by slice and
unverified. The scrub then hashes the stored slices in order: right ones are marked verified
(the next pass skips them), and an object whose slices each pass their own checksum but not,
together, the object's SHA-256 (the origin garbled its ranges and sent no digest to catch it)
is dropped whole, counted, and fetched right afterwards. An object with a slice missing is
skipped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from edgeproxy.cache import CacheStore, create_app
from edgeproxy.cache.req import cache_key
from edgeproxy.cli import cli
from edgeproxy.config import Config
from tests.chain import chain_config
from tests.foreign import ForeignOrigin
from tests.origins import pattern
from tests.servers import ServerThread
from tests.test_cache_node import _metric

SLICE = 64 * 1024
TOKEN = "object-scrub-token"
IMMUTABLE = ("Cache-Control", "public, max-age=31536000, immutable")
BODY = pattern(4 * SLICE + 100, seed=23)  # five slices, the last one short
SHA = hashlib.sha256(BODY).hexdigest()
TARGET = f"/v/t1/{SHA}"


@dataclass
class Nodes:
    url: str  # what clients talk to
    tiers: dict[str, str]  # tier → base URL
    config: Config


@pytest.fixture(params=["edge", "edge-shield"])
def nodes(request: pytest.FixtureRequest, foreign: ForeignOrigin,
          tmp_path: Path) -> Iterator[Nodes]:
    settings = request.node.callspec.params.get("cache_settings", {})
    config = chain_config(tmp_path, slice_size=SLICE, **settings).replace(admin_token=TOKEN)
    threads: list[ServerThread] = []
    try:
        upstream, tiers = foreign.url, {}
        for tier in (["shield"] if request.param == "edge-shield" else []) + ["edge"]:
            thread = ServerThread(create_app(config, tier, upstream=upstream)).start()
            threads.append(thread)
            upstream = tiers[tier] = thread.url
        yield Nodes(tiers["edge"], tiers, config)
    finally:
        for thread in reversed(threads):
            thread.stop()


def _route(foreign: ForeignOrigin, *, corrupt: bool) -> None:
    foreign.route(TARGET, body=BODY, etag=f'"{SHA}"', corrupt_ranges=corrupt,
                  content_digest="none", headers=[IMMUTABLE])


def _fetch_by_ranges(url: str, slices: range) -> None:
    """One small range in each of ``slices``: each tier fills those slices by ranges."""
    for index in slices:
        first = index * SLICE + 5
        r = httpx.get(url + TARGET, headers={"range": f"bytes={first}-{first + 9}"})
        assert r.status_code == 206


def _scrub(url: str) -> list[dict[str, Any]]:
    with httpx.stream("POST", url + "/_admin/scrub", timeout=30,
                      headers={"authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def _objects(summary: dict[str, Any]) -> tuple[int, int, int]:
    return summary["objects_verified"], summary["objects_bad"], summary["objects_incomplete"]


def _meta_verified(nodes: Nodes, tier: str) -> bool | None:
    store = CacheStore(nodes.config.cache_dir(tier), nodes.config.node(tier).cache_size)
    try:
        meta = store.get_meta(cache_key(TARGET, ""))
        return None if meta is None else meta.verified
    finally:
        store.close()


def _settled() -> None:
    time.sleep(0.1)  # nodes commit their index writes a few milliseconds late


def test_an_object_filled_by_ranges_is_verified_once(nodes: Nodes,
                                                     foreign: ForeignOrigin) -> None:
    _route(foreign, corrupt=False)
    _fetch_by_ranges(nodes.url, range(5))
    _settled()
    for tier, url in nodes.tiers.items():
        assert _meta_verified(nodes, tier) is False, tier  # filled by ranges: not yet
        assert _objects(_scrub(url)[-1]) == (1, 0, 0), tier
        _settled()
        assert _meta_verified(nodes, tier) is True, tier
        assert _objects(_scrub(url)[-1]) == (0, 0, 0), tier  # verified: not hashed again
    before = foreign.count(TARGET)
    r = httpx.get(nodes.url + TARGET)
    assert r.content == BODY and r.headers["x-cache"].startswith("HIT")
    assert foreign.count(TARGET) == before


def test_slices_right_by_their_checksums_but_wrong_together_are_dropped(
        nodes: Nodes, foreign: ForeignOrigin) -> None:
    _route(foreign, corrupt=True)  # ranges not starting at byte 0 come garbled, no digest
    _fetch_by_ranges(nodes.url, range(5))
    _settled()
    for tier, url in reversed(nodes.tiers.items()):  # the shield first, then the edge
        lines = _scrub(url)
        assert lines[-1]["bad"] == 0, tier  # every slice passes its own checksum
        assert _objects(lines[-1]) == (0, 1, 0), tier
        assert {"bad_object": {"key": TARGET}} in lines
        assert _meta_verified(nodes, tier) is None, tier  # dropped whole
        failures = _metric(httpx.get(url + "/metrics").text,
                           "edgeproxy_integrity_failures_total", reason="body_hash")
        assert failures == 1, tier
    _route(foreign, corrupt=False)  # the origin mended
    r = httpx.get(nodes.url + TARGET)
    assert r.status_code == 200 and r.content == BODY
    _settled()
    for url in nodes.tiers.values():
        assert _objects(_scrub(url)[-1])[1] == 0


def test_the_scrub_command_reports_a_bad_object(nodes: Nodes, foreign: ForeignOrigin) -> None:
    _route(foreign, corrupt=True)
    _fetch_by_ranges(nodes.url, range(5))
    _settled()
    result = CliRunner().invoke(cli, ["scrub", "--node", nodes.url, "--token", TOKEN])
    assert result.exit_code == 1, result.output  # like fsck: something was found and dropped
    summary = json.loads(result.stdout)["scrubbed"][nodes.url]
    assert _objects(summary) == (0, 1, 0)
    assert f"{TARGET} fails its SHA-256: dropped" in result.stderr


def test_an_object_with_a_missing_slice_is_skipped(nodes: Nodes,
                                                   foreign: ForeignOrigin) -> None:
    _route(foreign, corrupt=False)
    _fetch_by_ranges(nodes.url, range(1, 3))  # slices 1 and 2 of 5
    _settled()
    for tier, url in nodes.tiers.items():
        assert _objects(_scrub(url)[-1]) == (0, 0, 1), tier
        assert _meta_verified(nodes, tier) is False, tier


@pytest.mark.parametrize("cache_settings", [{"scrub_interval": 0.2}])
def test_a_background_scrub_verifies_objects_nobody_reads_whole(
        nodes: Nodes, foreign: ForeignOrigin, cache_settings: dict[str, Any]) -> None:
    _route(foreign, corrupt=False)
    _fetch_by_ranges(nodes.url, range(5))
    deadline = time.monotonic() + 10
    while not all(_meta_verified(nodes, tier) for tier in nodes.tiers):
        assert time.monotonic() < deadline, "no background pass verified the object"
        time.sleep(0.05)
