"""A shield whose upstream is a bucket refuses methods other than GET/HEAD in JSON, like every
refusal of the node's own, through the edge as well (over real sockets, moto's S3 server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy import cache
from edgeproxy.config import load_config
from tests.objectstore import S3Endpoint, moto_s3
from tests.servers import serve
from tests.test_s3_stack import _bucket_env


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def test_methods_a_bucket_does_not_serve_are_a_json_405(
        s3: S3Endpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    bucket = s3.new_bucket()
    s3.client().put_object(Bucket=bucket, Key="p/a.bin", Body=b"abc")
    _bucket_env(s3, monkeypatch)
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path / "var")})
    with serve(cache.create_app(config, "shield", upstream=f"s3://{bucket}/p")) as shield, \
            serve(cache.create_app(config, "edge", upstream=shield.url)) as edge:  # fmt: skip
        for node in (shield, edge):
            for method in ("PUT", "DELETE", "POST", "PATCH"):
                r = httpx.request(method, node.url + "/a.bin", content=b"x")
                assert r.status_code == 405, (method, r.status_code)
                assert r.json()["error"] == "method_not_allowed", (method, r.text)
                assert "GET" in r.headers["allow"]
            assert httpx.get(node.url + "/a.bin").content == b"abc"  # still served
