"""The memory tier: small objects served from a dict with the same answers as the full path,
and never beyond their freshness or a purge in any worker."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import httpx

from edgeproxy.cache import create_app
from tests.origins import TestOrigin, pattern
from tests.servers import serve
from tests.test_cache_node import make_config

TOKEN = "hot-tier-admin-token"


def test_hot_hits_match_the_full_path(tmp_path: Path) -> None:
    origin = TestOrigin()
    small, mid = pattern(2048), pattern(100_000, seed=3)
    origin.put("/v/t1/small", small)
    origin.put("/v/t1/mid", mid)
    with serve(origin) as o:
        app = create_app(make_config(tmp_path, slice_size=256 * 1024), "edge", upstream=o.url)
        with serve(app) as e:
            for path, body in (("/v/t1/small", small), ("/v/t1/mid", mid)):
                miss = httpx.get(e.url + path)
                disk_hit = httpx.get(e.url + path)   # from the disk cache; fills memory
                hot_hit = httpx.get(e.url + path)    # from memory
                assert miss.content == disk_hit.content == hot_hit.content == body
                assert disk_hit.headers["x-cache"] == hot_hit.headers["x-cache"] == \
                    "HIT from edge"
                ignore = {"date", "age"}
                assert {k: v for k, v in disk_hit.headers.items() if k not in ignore} == \
                    {k: v for k, v in hot_hit.headers.items() if k not in ignore}
                # ranges and validators on a hot object take the full path, same answers
                r = httpx.get(e.url + path, headers={"range": "bytes=100-199"})
                assert r.status_code == 206 and r.content == body[100:200]
                r = httpx.get(e.url + path, headers={"if-none-match": hot_hit.headers["etag"]})
                assert r.status_code == 304
            assert len(app.hot) == 2
    assert origin.count() == 2


def test_purge_in_one_worker_empties_every_workers_memory(tmp_path: Path) -> None:
    origin = TestOrigin()
    origin.put("/pp/bob", pattern(900))
    config = make_config(tmp_path).replace(admin_token=TOKEN)
    with serve(origin) as o:
        # two nodes on one cache directory: what two worker processes of one edge share
        a = create_app(config, "edge", upstream=o.url)
        b = create_app(config, "edge", upstream=o.url)
        with serve(a) as ea, serve(b) as eb:
            for url in (ea.url, eb.url):
                for _ in range(3):
                    httpx.get(url + "/pp/bob")
            assert len(a.hot) == len(b.hot) == 1
            origin.put("/pp/bob", pattern(900, seed=9))
            r = httpx.post(ea.url + "/_admin/purge", json={"paths": ["/pp/bob"]},
                           headers={"authorization": f"Bearer {TOKEN}"})
            assert r.json() == {"purged": 1}
            r = httpx.get(eb.url + "/pp/bob")
            assert r.headers["x-cache"].startswith("MISS from edge")
            assert r.content == pattern(900, seed=9)


def test_memory_copy_expires_with_the_object(tmp_path: Path) -> None:
    origin = TestOrigin()
    origin.put("/static/a.css", b"v1", headers={"cache-control": "max-age=1"})
    with serve(origin) as o, serve(create_app(make_config(tmp_path), "edge",
                                              upstream=o.url)) as e:
        for _ in range(3):
            assert httpx.get(e.url + "/static/a.css").content == b"v1"
        origin.put("/static/a.css", b"v2", headers={"cache-control": "max-age=60"})
        time.sleep(1.2)
        r = httpx.get(e.url + "/static/a.css")
        assert r.content == b"v2" and r.headers["x-cache"].startswith("MISS from edge")


def test_signed_classes_never_take_the_memory_shortcut(tmp_path: Path) -> None:
    from urllib.parse import urlencode

    from edgeproxy.signing import DownloadSigner

    config = make_config(tmp_path)
    classes = tuple(dataclasses.replace(c, require_signature=c.name == "media")
                    for c in config.content_classes)
    config = config.replace(content_classes=classes)
    signing = config.download_signing
    signer = DownloadSigner(signing.keys, signing.current)
    origin = TestOrigin()
    origin.put("/v/t1/s", pattern(500))
    with serve(origin) as o, serve(create_app(config, "edge", upstream=o.url)) as e:
        query = urlencode(signer.sign_download("/v/t1/s", time.time()))
        for _ in range(3):
            assert httpx.get(f"{e.url}/v/t1/s?{query}").status_code == 200
        r = httpx.get(e.url + "/v/t1/s")
        assert r.status_code == 403 and r.json()["error"] == "signature_required"
