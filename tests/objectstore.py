"""Real engines for the storage tests: an S3 endpoint (moto server on a loopback port)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moto.server import ThreadedMotoServer

from edgeproxy.config import S3Config
from edgeproxy.s3 import S3Settings
from tests.servers import free_port

ACCESS_KEY, SECRET_KEY = "edgeproxy-test-key", "edgeproxy-test-secret"


@dataclass
class S3Endpoint:
    """A running S3 endpoint and the settings that reach it."""

    url: str
    secrets_dir: Path

    def settings(self) -> S3Settings:
        return S3Settings.resolve(self.config(), env={})

    def config(self) -> S3Config:
        key, secret = self.secrets_dir / "key", self.secrets_dir / "secret"
        key.write_text(ACCESS_KEY + "\n")
        secret.write_text(SECRET_KEY + "\n")
        return S3Config(endpoint=self.url, region="us-east-1", path_style=True,
                        access_key_id_file=str(key), secret_access_key_file=str(secret))

    def env(self) -> dict[str, str]:
        """``EDGEPROXY_*`` overrides pointing the ``s3`` section here."""
        config = self.config()
        return {"EDGEPROXY_S3__ENDPOINT": self.url, "EDGEPROXY_S3__PATH_STYLE": "true",
                "EDGEPROXY_S3__REGION": "us-east-1",
                "EDGEPROXY_S3__ACCESS_KEY_ID_FILE": config.access_key_id_file,
                "EDGEPROXY_S3__SECRET_ACCESS_KEY_FILE": config.secret_access_key_file}

    def client(self) -> Any:
        return self.settings().client()

    def new_bucket(self) -> str:
        """A fresh, private bucket."""
        name = "media-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        answer = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for obj in answer.get("Contents", ()))


@contextmanager
def moto_s3(tmp: Path) -> Iterator[S3Endpoint]:
    """moto's S3 server on a free loopback port for the duration of the block."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    secrets_dir = tmp / "s3-secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}", secrets_dir)
    finally:
        server.stop()
