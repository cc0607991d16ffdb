"""Storage tiers by age (seed 000: hot 0-30 days, cold after): a local store's sweeper moves old
blobs to a cold directory and still serves them; an s3 store's lifecycle rule is applied by
``edgeproxy storage lifecycle --apply`` (moto server) and checked at start."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeproxy.cli.commands import cli
from edgeproxy.config import StorageConfig
from edgeproxy.origin.s3store import S3BlobStore
from edgeproxy.origin.tiers import COLD_RULE, STAGING_RULE, check_lifecycle
from edgeproxy.s3 import S3Location
from tests.objectstore import S3Endpoint, moto_s3
from tests.test_auth_limits import metric
from tests.test_origin import make_blob, run_origin, sha

DAY = 86400.0


def test_local_blobs_move_to_the_cold_directory_and_are_still_served(tmp_path: Path) -> None:
    cold = tmp_path / "cold-disk"
    env = {"EDGEPROXY_STORAGE__COLD_DIR": str(cold), "EDGEPROXY_STORAGE__COLD_AFTER": "30d"}
    with run_origin(tmp_path / "data", env=env) as o:
        old, new = make_blob(100), make_blob(50)
        o.upload(old)
        core = o.app.state.origin
        o.clock.now += 30 * DAY + 1
        o.upload(new)  # stored "now": hot, while `old` is past cold_after
        asyncio.run(core.sweep())
        assert o.blobs() == [sha(new)]
        assert [p.name for p in cold.rglob("*") if p.is_file()] == [sha(old)]
        r = o.http.get(f"/v/t1/{sha(old)}", headers={"range": "bytes=0-7"})
        assert r.status_code == 206 and r.content == old[:8]
        assert o.http.get(f"/v/t1/{sha(old)}").content == old
        o.upload(old)  # store-once sees the cold copy: nothing new in the hot tier
        assert o.blobs() == [sha(new)]
        assert metric(o, 'edgeproxy_origin_stored_bytes{tier="cold"}') == len(old)
        assert metric(o, 'edgeproxy_origin_stored_bytes{tier="hot"}') == len(new)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


def test_lifecycle_rule_applied_by_the_cli_and_checked_at_start(
        s3: S3Endpoint, tmp_path: Path) -> None:  # fmt: skip
    bucket = s3.new_bucket()
    theirs = {"ID": "someone-elses", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
              "Expiration": {"Days": 7}}  # fmt: skip
    s3.client().put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [theirs]})
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/media",
           "EDGEPROXY_STORAGE__COLD_AFTER": "30d", "EDGEPROXY_DATA_DIR": str(tmp_path)}
    store = S3BlobStore(S3Location.parse(f"s3://{bucket}/media"), s3.settings())
    assert asyncio.run(check_lifecycle(store, StorageConfig(cold_after=30 * DAY))) is False

    runner = CliRunner()
    shown = runner.invoke(cli, ["storage", "lifecycle"], env=env)
    assert shown.exit_code == 1, shown.output
    assert json.loads(shown.output)["missing"] == [COLD_RULE, STAGING_RULE]
    applied = runner.invoke(cli, ["storage", "lifecycle", "--apply"], env=env)
    assert applied.exit_code == 0, applied.output
    assert runner.invoke(cli, ["storage", "lifecycle"], env=env).exit_code == 0

    rules = {r["ID"]: r for r in s3.client().get_bucket_lifecycle_configuration(
        Bucket=bucket)["Rules"]}  # fmt: skip
    assert set(rules) == {"someone-elses", COLD_RULE, STAGING_RULE}
    assert rules[COLD_RULE]["Filter"] == {"Prefix": "media/blobs/"}
    assert rules[COLD_RULE]["Transitions"] == [{"Days": 30, "StorageClass": "STANDARD_IA"}]
    assert asyncio.run(check_lifecycle(store, StorageConfig(cold_after=30 * DAY))) is True
    # Another cold_after is another rule: the start check says so.
    assert asyncio.run(check_lifecycle(store, StorageConfig(cold_after=60 * DAY))) is False


def test_lifecycle_refuses_a_local_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["storage", "lifecycle"],
                                env={"EDGEPROXY_DATA_DIR": str(tmp_path)})  # fmt: skip
    assert result.exit_code == 2 and "not an s3:// bucket" in result.output
