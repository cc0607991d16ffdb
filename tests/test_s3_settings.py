"""S3 settings: ``s3://`` locations, the ``s3`` config section, and the AWS_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeproxy.config import S3Config, load_config
from edgeproxy.errors import ConfigError
from edgeproxy.origin.db import database_url
from edgeproxy.s3 import S3Location, S3Settings


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://media", "media", ""),
    ("s3://media/", "media", ""),
    ("s3://media/eu/v1/", "media", "eu/v1/"),
    ("s3://media/eu", "media", "eu/"),
])  # fmt: skip
def test_locations(url: str, bucket: str, prefix: str) -> None:
    assert S3Location.parse(url) == S3Location(bucket, prefix)


@pytest.mark.parametrize("url", ["http://media/x", "s3:///x", "s3://media/x?y=1", "media"])
def test_bad_locations(url: str) -> None:
    with pytest.raises(ConfigError):
        S3Location.parse(url)


def test_aws_environment_fills_what_the_section_leaves_empty() -> None:
    env = {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-3",
           "AWS_ACCESS_KEY_ID": "id", "AWS_SECRET_ACCESS_KEY": "secret"}  # fmt: skip
    s = S3Settings.resolve(S3Config(), env)
    assert (s.endpoint, s.region, s.path_style) == ("http://minio:9000", "eu-west-3", False)
    assert s.credentials is not None and s.credentials.access_key == "id"
    s = S3Settings.resolve(S3Config(endpoint="http://other:9000", region="us-west-2",
                                    path_style=True, public_endpoint="https://s3.example"), env)
    assert (s.endpoint, s.region, s.public_endpoint) == ("http://other:9000", "us-west-2",
                                                         "https://s3.example")  # fmt: skip
    assert S3Settings.resolve(S3Config(), {}).region == "us-east-1"


def test_secrets_from_files(tmp_path: Path) -> None:
    (tmp_path / "id").write_text("file-id\n")
    (tmp_path / "secret").write_text("file-secret\n")
    config = S3Config(access_key_id_file=str(tmp_path / "id"),
                      secret_access_key_file=str(tmp_path / "secret"))  # fmt: skip
    creds = S3Settings.resolve(config, {"AWS_ACCESS_KEY_ID": "env-id"}).credentials
    assert creds is not None and (creds.access_key, creds.secret_key) == ("file-id",
                                                                          "file-secret")
    with pytest.raises(ConfigError, match="cannot read"):
        S3Settings.resolve(S3Config(access_key_id_file=str(tmp_path / "nope")), {})
    with pytest.raises(ConfigError, match="both"):
        S3Settings.resolve(S3Config(), {"AWS_ACCESS_KEY_ID": "only-the-id"})


def test_store_and_database_come_from_the_environment(tmp_path: Path) -> None:
    config = load_config(None, env={"EDGEPROXY_ORIGIN__STORE": "s3://media/p",
                                    "EDGEPROXY_ORIGIN__DATABASE": "postgresql://u@db/edge",
                                    "EDGEPROXY_S3__PATH_STYLE": "true"})  # fmt: skip
    assert config.origin.store == "s3://media/p" and config.s3.path_style is True
    assert database_url(config.origin.database, tmp_path) == "postgresql+psycopg://u@db/edge"
    assert database_url("", tmp_path / "o.db") == f"sqlite:///{tmp_path / 'o.db'}"
    with pytest.raises(ConfigError):
        database_url("mysql://db/x", tmp_path)
