"""CORS for the media API, tus and the upload URLs, so a web page can upload from a browser.

Only ``/v1/…`` gets CORS headers: blobs (``/v/…``) are fetched by shields, and a ``Vary:
Origin`` there would split the caches for nothing. Preflights (``OPTIONS`` with
``Access-Control-Request-Method``) are answered here; a tus discovery ``OPTIONS`` without it
still reaches the tus handler. No credentials: the API takes a bearer token, not cookies.
"""

from __future__ import annotations

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

CORS_PREFIX = "/v1/"
ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# What the client library, tus-js-client and Uppy send on these paths.
ALLOW_HEADERS = (
    "Authorization", "Content-Type", "X-Upload-Offset", "X-Requested-With",
    "Tus-Resumable", "Upload-Length", "Upload-Metadata", "Upload-Offset", "Upload-Checksum",
    "Upload-Concat", "Upload-Defer-Length", "X-HTTP-Method-Override",
)  # fmt: skip
# Response headers a script may read: without this list a browser hides all but a few.
EXPOSE_HEADERS = (
    "Location", "Upload-Offset", "Upload-Length", "Upload-Expires", "Upload-Metadata",
    "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    "X-Upload-Offset", "X-Media-Id",
)  # fmt: skip
PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight answer


class APICors:
    """ASGI wrapper: CORS on ``/v1/…`` for ``origins``, everything else untouched."""

    def __init__(self, app: ASGIApp, origins: tuple[str, ...]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app, allow_origins=list(origins), allow_methods=list(ALLOW_METHODS),
            allow_headers=list(ALLOW_HEADERS), expose_headers=list(EXPOSE_HEADERS),
            allow_credentials=False, max_age=PREFLIGHT_MAX_AGE,
        )  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route ``/v1/…`` HTTP requests through the CORS middleware."""
        if scope["type"] == "http" and scope["path"].startswith(CORS_PREFIX):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
