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
