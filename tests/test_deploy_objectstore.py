"""deploy/'s object-store examples (MinIO + PostgreSQL, compose and Kubernetes): the files
parse, point at each other, and the origin's settings in them load into a valid `Config`
naming an s3 store and a PostgreSQL database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from edgeproxy.config import load_config
from edgeproxy.origin.db import database_url
from edgeproxy.s3 import S3Location, S3Settings
from tests.test_deploy import CONTAINER, DEPLOY, _interpolate, read_env_file

OVERLAY = DEPLOY / "kubernetes-objectstore"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_compose_overlay_runs_two_origins_on_minio_and_postgres() -> None:
    compose = yaml.safe_load((CONTAINER / "compose.objectstore.yaml").read_text())
    services = compose["services"]
    assert {"minio", "minio-init", "postgres", "origin", "origin-2"} <= set(services)
    for name in ("origin", "origin-2"):
        service = services[name]
        env: dict[str, str] = {}
        for entry in service["env_file"]:
            env |= read_env_file(CONTAINER / _interpolate(entry))
        env |= {k: str(v) for k, v in service["environment"].items()}
        config = load_config(CONTAINER / "config.yaml", env=env)
        assert S3Location.parse(config.origin.store).bucket == "edgeproxy-media"
        assert database_url(config.origin.database, Path("/x")).startswith(
            "postgresql+psycopg://edgeproxy:")
        settings = S3Settings.resolve(config.s3, env)
        assert settings.credentials is not None and settings.path_style
        assert settings.public_endpoint == "http://localhost:9000"
        assert set(service["depends_on"]) == {"postgres", "minio-init"}
    # The bucket the origins use is the one minio-init creates, private.
    assert "local/edgeproxy-media" in services["minio-init"]["command"][0]
    assert "anonymous set none" in services["minio-init"]["command"][0]


def test_kubernetes_overlay_points_the_origin_at_the_bucket_and_database() -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (OVERLAY / resource).exists(), resource
    for patch in kustomization["patches"]:
        assert (OVERLAY / patch["path"]).exists()
    services = {d["metadata"]["name"] for f in ("minio.yaml", "postgres.yaml")
                for d in _docs(OVERLAY / f) if d["kind"] == "Service"}  # fmt: skip
    (patch,) = _docs(OVERLAY / "origin-objectstore.yaml")
    container = patch["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    secret = _docs(OVERLAY / "secret.example.yaml")[0]["stringData"]
    config = load_config(None, env={**env, **secret})
    assert config.origin.store == "s3://edgeproxy-media/media"
    assert config.s3.endpoint == "http://edgeproxy-minio:9000"
    host = config.origin.database.split("@", 1)[1].split(":", 1)[0]
    assert {host, "edgeproxy-minio"} <= services
    assert {s["secretRef"]["name"] for s in container["envFrom"]} == {
        "edgeproxy-secrets", "edgeproxy-objectstore"}
