"""The package face: a small, deliberate public surface (starlette's `__all__` discipline)."""

from __future__ import annotations

import importlib.metadata

import edgeproxy

EXPECTED = {
    "ClientError", "Config", "ConfigError", "EdgeProxyError", "HTTPError", "IntegrityError",
    "MediaClient", "UpstreamError", "__version__", "create_cache_app", "create_origin_app",
    "load_config",
}


def test_exports_are_exactly_the_public_surface() -> None:
    assert set(edgeproxy.__all__) == EXPECTED
    for name in edgeproxy.__all__:
        assert getattr(edgeproxy, name) is not None, name


def test_version_matches_the_installed_distribution() -> None:
    assert edgeproxy.__version__ == importlib.metadata.version("edgeproxy")


def test_roles_are_folders() -> None:
    import edgeproxy.cache
    import edgeproxy.cli
    import edgeproxy.client
    import edgeproxy.origin

    for pkg in (edgeproxy.cache, edgeproxy.cli, edgeproxy.client, edgeproxy.origin):
        assert pkg.__file__ is not None and pkg.__file__.endswith("__init__.py")
        assert pkg.__all__, pkg.__name__


def test_a_cache_node_does_not_import_the_other_roles() -> None:
    """A cache worker imports ``edgeproxy.cache`` only: the package face resolves its names
    lazily, so the origin's database layer, the client's crypto and the S3 SDK stay out of
    every worker's memory (they were ~40 MiB of its RSS)."""
    import subprocess
    import sys

    code = ("import sys, edgeproxy.cache, edgeproxy.server, edgeproxy.workers; "
            "print(' '.join(sorted(sys.modules)))")
    loaded = set(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                text=True).stdout.split())
    for heavy in ("edgeproxy.origin", "edgeproxy.client", "edgeproxy.cli", "sqlalchemy",
                  "botocore", "cryptography", "rich", "httpx"):
        assert heavy not in loaded, heavy


def test_the_lazy_face_gives_the_same_objects_as_their_modules() -> None:
    from edgeproxy import cache, client, config, errors, origin

    assert edgeproxy.create_cache_app is cache.create_app
    assert edgeproxy.create_origin_app is origin.create_app
    assert edgeproxy.MediaClient is client.MediaClient
    assert edgeproxy.load_config is config.load_config
    assert edgeproxy.HTTPError is errors.HTTPError
    assert "MediaClient" in dir(edgeproxy)
    try:
        edgeproxy.nothing_of_that_name  # noqa: B018
    except AttributeError as exc:
        assert "nothing_of_that_name" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")
