"""The bundled upload origin: authenticated, resumable, limited uploads; committed blobs served.

Flow: ``POST /v1/media/upload/request`` (JWT) returns a signed, expiring upload URL; the client
sends the encrypted blob there — one ``PUT``, a resumed ``PUT`` with ``X-Upload-Offset``, or tus
``PATCH``es after ``POST /v1/tus`` — staged on disk; ``POST /v1/media/upload/confirm`` (JWT)
checks size, SHA-256 and blob layout and commits the blob, content-addressed and stored once, to
the `BlobStore`; ``GET /v/t1/{sha256}`` (and ``/thumb``) serves it with Range support to shields
and edges; ``GET /v1/media/{media_id}/content`` (JWT) answers a signed download URL. Metadata
lives in SQLite (`Records`), so a restarted origin carries on, partial uploads included.

The handlers live in `media_api` (request, confirm, content), `uploads` (the upload URL), `tus`
(discovery and creation) and `serving` (blobs, profile photos); `core` holds what they share.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Config
from .core import OriginCore
from .cors import APICors
from .media_api import MediaAPI
from .metrics import CONTENT_TYPE
from .openapi import openapi_json
from .responses import CatchAll, install_error_handlers
from .serving import Serving
from .tus import TusAPI
from .uploads import UploadURL


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The origin ASGI app for ``config`` (data under ``config.data_dir / "origin"``).

    ``clock`` (unix seconds) is injectable so tests can expire upload URLs, uploads and signed
    URLs, and move rate-limit windows, without sleeping. (JWT expiry uses the real time.)
    The database opens in the app's lifespan, so serve it with lifespan enabled.
    """
    core = OriginCore(config, clock)
    media, uploads, serving = MediaAPI(core), UploadURL(core), Serving(core)
    tus = TusAPI(core, media, uploads)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "role": "origin"})

    async def metrics(request: Request) -> Response:
        return Response(await core.metrics.render(), media_type=CONTENT_TYPE)

    get = ["GET", "HEAD"]
    routes = [
        Route("/healthz", healthz, methods=get),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/v1/media/upload/request", media.request_upload, methods=["POST"]),
        Route("/v1/media/upload/confirm", media.confirm_upload, methods=["POST"]),
        Route("/v1/media/{media_id}/content", media.content, methods=["GET"]),
        Route("/v1/upload/{media_id}", uploads.put, methods=["PUT"]),
        Route("/v1/upload/{media_id}", uploads.patch, methods=["PATCH"]),
        Route("/v1/upload/{media_id}", uploads.head, methods=["HEAD"]),
        Route("/v1/upload/{media_id}", uploads.delete, methods=["DELETE"]),
        Route("/v1/upload/{media_id}", tus.options, methods=["OPTIONS"]),
        Route("/v1/tus", tus.create, methods=["POST"]),
        Route("/v1/tus", tus.options, methods=["OPTIONS"]),
        Route("/v1/profile/{user}/photo", serving.put_profile_photo, methods=["PUT"]),
        Route("/v/t1/{sha}", serving.get_media, methods=get),
        Route("/v/t1/{sha}/thumb", serving.get_thumbnail, methods=get),
        Route("/pp/{user}", serving.get_profile_photo, methods=get),
    ]
    cors = config.origin.cors_origins
    # CORS outermost, so that even a 500 reaches a browser's script as a 500.
    middleware = [Middleware(APICors, origins=cors)] if cors else []
    middleware.append(Middleware(CatchAll))
    app = Starlette(routes=routes, lifespan=core.lifespan, middleware=middleware)
    # A target with a trailing slash is not one of these: a JSON 404. Starlette's default
    # redirect named the origin's own address (from Host), which edges relayed to receivers.
    app.router.redirect_slashes = False
    app.state.origin = core
    install_error_handlers(app)
    return app
