"""Signed download URLs checked at the edge (seed 004): before any upstream traffic, with key
rotation, and without splitting the cache per signature."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.config import DownloadSigningConfig
from edgeproxy.signing import DownloadSigner
from tests.origins import TestOrigin, pattern
from tests.servers import ServerThread, serve
from tests.test_cache_node import make_config

KEYS = {"k0": "previous-download-key-0000", "k1": "current-download-key-11111"}


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[tuple[ServerThread, TestOrigin]]:
    config = make_config(tmp_path)
    classes = tuple(dataclasses.replace(c, require_signature=c.name == "media")
                    for c in config.content_classes)
    config = config.replace(content_classes=classes,
                            download_signing=DownloadSigningConfig(keys=KEYS, current="k1"))
    origin = TestOrigin()
    origin.put("/v/t1/m", pattern(70_000))
    origin.put("/pp/alice", pattern(900, seed=2))
    with serve(origin) as o, serve(create_app(config, "edge", upstream=o.url)) as e:
        yield e, origin


def signed(path: str, *, kid: str = "k1", ttl: float = 3600, now: float | None = None) -> str:
    signer = DownloadSigner(KEYS, kid)
    return f"{path}?{urlencode(signer.sign_download(path, now or time.time(), ttl))}"


def test_valid_signatures_share_one_cached_copy(edge: tuple[ServerThread, TestOrigin]) -> None:
    srv, origin = edge
    r1 = httpx.get(srv.url + signed("/v/t1/m", ttl=600))
    r2 = httpx.get(srv.url + signed("/v/t1/m", ttl=1200))
    assert r1.status_code == r2.status_code == 200
    assert r1.content == r2.content == pattern(70_000)
    assert r2.headers["x-cache"] == "HIT from edge"
    assert origin.count("/v/t1/m") == 1


@pytest.mark.parametrize(("make_url", "error"), [
    (lambda: "/v/t1/m", "signature_required"),
    (lambda: signed("/v/t1/m").replace("sig=", "sig=0"), "bad_signature"),
    (lambda: signed("/v/t1/m").replace("exp=", "exp=1"), "bad_signature"),
    (lambda: signed("/v/t1/other").replace("other", "m"), "bad_signature"),  # other path
    (lambda: signed("/v/t1/m", now=time.time() - 7200, ttl=60), "signature_expired"),
    (lambda: signed("/v/t1/m").replace("kid=k1", "kid=k9"), "bad_signature"),
    (lambda: "/v/t1/m?exp=1&kid=k1", "bad_signature"),        # incomplete
    (lambda: signed("/pp/alice").replace("sig=", "sig=f"), "bad_signature"),  # optional class
])
def test_refused_before_any_upstream_traffic(edge: tuple[ServerThread, TestOrigin],
                                             make_url: object, error: str) -> None:
    srv, origin = edge
    url = make_url()  # type: ignore[operator]
    r = httpx.get(srv.url + url)
    assert r.status_code == 403
    assert r.json()["error"] == error
    assert httpx.head(srv.url + url).status_code == 403
    assert len(origin.hits) == 0


def test_previous_key_still_accepted_and_optional_class_unsigned(
        edge: tuple[ServerThread, TestOrigin]) -> None:
    srv, _origin = edge
    assert httpx.get(srv.url + signed("/v/t1/m", kid="k0")).status_code == 200
    assert httpx.get(srv.url + "/pp/alice").status_code == 200
    assert httpx.get(srv.url + signed("/pp/alice")).status_code == 200
