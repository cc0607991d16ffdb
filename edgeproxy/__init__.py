"""edgeproxy: a self-hostable CDN for end-to-end-encrypted media.

The public surface is small: the configuration, the three roles' ASGI apps, the encrypting
client, and the error tree. Everything else is internal and may change between releases.

The names are resolved on first use (PEP 562): a cache worker imports ``edgeproxy.cache``,
and must not pay for the origin's database layer, the client's crypto and the S3 SDK it
never runs (~40 MiB of every worker's memory when this module imported them all).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import create_app as create_cache_app
    from .client import MediaClient
    from .config import Config, load_config
    from .errors import (
        ClientError,
        ConfigError,
        EdgeProxyError,
        HTTPError,
        IntegrityError,
        UpstreamError,
    )
    from .origin import create_app as create_origin_app

__version__ = "0.2.0"

__all__ = [
    "ClientError",
    "Config",
    "ConfigError",
    "EdgeProxyError",
    "HTTPError",
    "IntegrityError",
    "MediaClient",
    "UpstreamError",
    "__version__",
    "create_cache_app",
    "create_origin_app",
    "load_config",
]

# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "ClientError": (".errors", "ClientError"),
    "Config": (".config", "Config"),
    "ConfigError": (".errors", "ConfigError"),
    "EdgeProxyError": (".errors", "EdgeProxyError"),
    "HTTPError": (".errors", "HTTPError"),
    "IntegrityError": (".errors", "IntegrityError"),
    "MediaClient": (".client", "MediaClient"),
    "UpstreamError": (".errors", "UpstreamError"),
    "create_cache_app": (".cache", "create_app"),
    "create_origin_app": (".origin", "create_app"),
    "load_config": (".config", "load_config"),
}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first asked for."""
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
