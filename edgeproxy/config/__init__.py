"""Settings: one `Config` value object, loaded once from YAML with `EDGEPROXY_*` overrides.

Every key is checked at load time: an unknown key, a wrong type or an out-of-range value raises
`ConfigError` naming the dotted key (``edge.port``), so a bad file fails at start, not mid-request.
Durations accept ``300``, ``"5m"``, ``"7d"``; sizes accept ``1048576``, ``"1MiB"``, ``"50MB"``.
Environment variables override the file: ``EDGEPROXY_EDGE__PORT=9090`` sets ``edge.port``
(``__`` separates levels; the value is read as a YAML scalar); a variable whose section is no
setting (``EDGEPROXY_EGDE__PORT``) is refused, naming it. Every secret also has a ``*_file``
variant (``origin.signing_key_file``, ``download_signing.keys_file: {k1: path}``) whose file holds
the value, for Docker/Kubernetes secrets mounted as files; setting both is an error.

The package: `units` (durations, sizes, free space), `sections` (the dataclasses and their
defaults), `loading` (YAML, environment, conversion and checks). Everything is imported from
here.
"""

from __future__ import annotations

from .loading import ENV_PREFIX, NON_SETTING_ENV, check_url, load_config
from .sections import (
    DEFAULT_ALLOWED_TYPES,
    DEFAULT_BLOCKED_EXTENSIONS,
    DEFAULT_BLOCKED_TYPES,
    DEFAULT_CONTENT_CLASSES,
    DEV_JWT_SECRET,
    TIERS,
    AuthConfig,
    CacheConfig,
    Config,
    ContentClass,
    DownloadSigningConfig,
    HTTPLimitsConfig,
    LimitsConfig,
    NodeConfig,
    OriginConfig,
    S3Config,
    StorageConfig,
    TierTTL,
    UpstreamConfig,
    parse_upstreams,
)
from .units import FreeSpace, parse_duration, parse_free_space, parse_size

__all__ = [
    "DEFAULT_ALLOWED_TYPES", "DEFAULT_BLOCKED_EXTENSIONS", "DEFAULT_BLOCKED_TYPES",
    "DEFAULT_CONTENT_CLASSES", "DEV_JWT_SECRET", "ENV_PREFIX", "NON_SETTING_ENV", "TIERS",
    "AuthConfig", "CacheConfig", "Config", "ContentClass", "DownloadSigningConfig", "FreeSpace",
    "HTTPLimitsConfig", "LimitsConfig", "NodeConfig", "OriginConfig", "S3Config",
    "StorageConfig", "TierTTL", "UpstreamConfig", "check_url", "load_config", "parse_duration",
    "parse_free_space", "parse_size", "parse_upstreams",
]
