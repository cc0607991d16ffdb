"""The bundled upload origin role: `create_app` builds its ASGI app from a `Config`."""

from .app import create_app

__all__ = ["create_app"]
