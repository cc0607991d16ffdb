"""edgeproxy: a self-hostable CDN for end-to-end-encrypted media.

The public surface is small: the configuration, the three roles' ASGI apps, the encrypting
client, and the error tree. Everything else is internal and may change between releases.
"""

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
