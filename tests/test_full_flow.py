"""Issue "whole media flow": a multi-MiB image encrypted, uploaded, and fetched through
edge → shield → origin over real sockets, with X-Cache and /metrics telling what happened."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import httpx
from PIL import Image

from edgeproxy import cache, origin
from edgeproxy.client import MediaClient
from edgeproxy.config import load_config
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port, serve


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            total += float(m.group(2))
    return total


def test_upload_then_download_through_edge_and_shield(tmp_path: Path) -> None:
    ports = {role: free_port() for role in ("origin", "shield", "edge")}
    config = load_config(None, env={
        "EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
        "EDGEPROXY_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['edge']}",
        "EDGEPROXY_ORIGIN__PORT": str(ports["origin"]),
    })
    image = tmp_path / "photo.png"
    Image.frombytes("RGB", (1200, 900), os.urandom(1200 * 900 * 3)).save(image)
    assert image.stat().st_size > 3 * 1024 * 1024
    edge_app = cache.create_app(config, "edge", upstream=f"http://127.0.0.1:{ports['shield']}")
    with serve(origin.create_app(config), ports["origin"]) as o, \
            serve(cache.create_app(config, "shield", upstream=o.url), ports["shield"]) as s, \
            serve(edge_app, ports["edge"]) as e:
        # The media API needs a bearer JWT (issue 4); the dev secret signs one for "alice".
        with MediaClient(o.url, token=mint_token(config.auth.jwt_secret, "alice")) as client:
            payload = client.upload(image)
            assert payload["media_url"].startswith(e.url + "/v/t1/")
            blob_len = len(httpx.get(payload["media_url"].replace(e.url, o.url)).content)

            results = []
            for name in ("first", "second"):
                out = tmp_path / f"{name}.png"
                result = client.download(payload, out)
                assert out.read_bytes() == image.read_bytes()
                results.append(result.x_cache)
            assert results == ["MISS from edge, MISS from shield", "HIT from edge"]

            edge_app.clear()
            result = client.download(payload, tmp_path / "third.png")
            assert result.x_cache == "MISS from edge, HIT from shield"
            assert hashlib.sha256((tmp_path / "third.png").read_bytes()).hexdigest() == \
                payload["file_sha256"]

            # a ranged read through the edge, checked with curl-like raw bytes too
            r = httpx.get(payload["media_url"], headers={"range": "bytes=-1"})
            assert r.status_code == 206
            assert r.headers["content-range"] == f"bytes {blob_len - 1}-{blob_len - 1}/{blob_len}"

            thumb = httpx.get(payload["thumbnail_url"])
            assert thumb.status_code == 200
            assert thumb.headers["x-cache"] == "MISS from edge, MISS from shield"
            thumb_len = len(thumb.content)

        edge_metrics = httpx.get(e.url + "/metrics").text
        shield_metrics = httpx.get(s.url + "/metrics").text

    media = {"content_class": "media"}
    assert _metric(edge_metrics, "edgeproxy_requests_total", tier="edge", result="MISS",
                   **media) == 2
    # the second download, and the suffix range after the third (the slice was refilled)
    assert _metric(edge_metrics, "edgeproxy_requests_total", tier="edge", result="HIT",
                   **media) == 2
    assert _metric(edge_metrics, "edgeproxy_response_bytes_total", tier="edge",
                   **media) == 3 * blob_len + 1
    assert _metric(edge_metrics, "edgeproxy_requests_total", tier="edge",
                   content_class="thumbnail") == 1
    assert _metric(shield_metrics, "edgeproxy_requests_total", tier="shield", result="MISS",
                   **media) == 1
    assert _metric(shield_metrics, "edgeproxy_requests_total", tier="shield", result="HIT",
                   **media) == 1
    assert _metric(shield_metrics, "edgeproxy_upstream_bytes_total", tier="shield") >= blob_len
    assert _metric(edge_metrics, "edgeproxy_upstream_bytes_total", tier="edge") == \
        2 * blob_len + thumb_len
