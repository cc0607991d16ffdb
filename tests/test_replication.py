"""Cross-region replication: committed blobs copied to every store in ``origin.replicas`` by
the built-in copier, and ``edgeproxy_replication_lag_seconds`` rising, then draining (moto
server for the buckets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.objectstore import S3Endpoint, moto_s3
from tests.test_auth_limits import metric
from tests.test_origin import Origin, make_blob, run_origin, sha

LAG = "edgeproxy_replication_lag_seconds"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def test_blobs_are_copied_to_every_replica_and_the_lag_drains(s3: S3Endpoint,
                                                               tmp_path: Path) -> None:  # fmt: skip
    primary, far = s3.new_bucket(), s3.new_bucket()
    local_replica = tmp_path / "replica-dir"
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{primary}/m",
           "EDGEPROXY_ORIGIN__REPLICAS": f'["s3://{far}/copy", "{local_replica}"]',
           "EDGEPROXY_ORIGIN__REPLICATION_INTERVAL": "1h"}  # fmt: skip
    with run_origin(tmp_path / "data", env=env) as o:
        blob, other, thumb = make_blob(64), make_blob(32), make_blob(2)
        _upload(o, blob, thumb)
        assert metric(o, LAG) == 0  # just committed
        o.clock.now += 90
        _upload(o, other)
        o.clock.now += 30
        assert metric(o, LAG) == 120  # the oldest blob not on every replica
        assert s3.keys(far) == []

        copied = asyncio.run(o.app.state.origin.replicator.run_once())
        assert copied == 2 * 3  # two media blobs and a thumbnail, to each replica
        want = sorted([f"copy/blobs/{sha(b)}" for b in (blob, other, thumb)]
                      + [f"copy/thumbs/{sha(blob)}"])  # what a shield reading it maps /thumb to
        assert s3.keys(far) == want
        on_disk = sorted(p.name for p in local_replica.rglob("*") if p.is_file())
        assert on_disk == sorted(sha(b) for b in (blob, other, thumb))
        path = local_replica / sha(blob)[:2] / sha(blob)[2:4] / sha(blob)
        assert path.read_bytes() == blob
        assert metric(o, LAG) == 0
        assert asyncio.run(o.app.state.origin.replicator.run_once()) == 0  # nothing left


def _upload(o: Origin, blob: bytes, thumb: bytes | None = None) -> None:
    """Through the origin (the bucket's multipart), then confirmed with a thumbnail."""
    ticket = o.request(blob, upload_method="resumable")
    assert o.put(ticket["upload_url"], blob).status_code == 200
    assert o.confirm(ticket["media_id"], sha(blob), thumb).status_code == 200
