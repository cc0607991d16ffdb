"""Serving committed blobs to shields and edges, and profile photos.

``GET|HEAD /v/t1/{sha256}`` (and ``/thumb``) serve committed media with Range support; they are
public (content-addressed ciphertext) — edges, not the origin, check signed-URL parameters,
which the origin ignores. ``PUT /v1/profile/{user}/photo`` needs the JWT of that very user;
``GET /pp/{user}`` serves the current photo.
"""

from __future__ import annotations

import re
import secrets

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import HTTPError
from .blobstore import SHA256_HEX
from .core import OriginCore
from .http import Body, int_or_none, serve_blob
from .staging import TooLarge

USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
PROFILE_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_PROFILE_PHOTO = 5 * 1024**2
MEDIA_CACHE_CONTROL = "public, max-age=31536000, immutable"
PROFILE_CACHE_CONTROL = "public, max-age=86400"
# A media id is the blob's SHA-256: it is missing only until its upload is confirmed, so caches
# may remember the 404 briefly (negative caching) and spare the origin repeated look-ups.
MISSING_CACHE_CONTROL = "public, max-age=10"
MISSING = {"Cache-Control": MISSING_CACHE_CONTROL}
OCTETS = "application/octet-stream"  # media is encrypted: its type is nobody's business


class Serving:
    """Handlers that deliver stored blobs, and profile-photo upload."""

    def __init__(self, core: OriginCore) -> None:
        self.o = core

    async def get_media(self, request: Request) -> Response:
        """``GET|HEAD /v/t1/{sha}``: a committed media blob."""
        sha = request.path_params["sha"]
        if SHA256_HEX.fullmatch(sha) and await self.o.db(self.o.records.get_media, sha) is not None:
            return await serve_blob(request, self.o.store, sha, OCTETS, MEDIA_CACHE_CONTROL)
        raise HTTPError(404, "not_found", "no such media", headers=MISSING)

    async def get_thumbnail(self, request: Request) -> Response:
        """``GET|HEAD /v/t1/{sha}/thumb``: the thumbnail committed with a media blob."""
        sha = request.path_params["sha"]
        media = None
        if SHA256_HEX.fullmatch(sha):
            media = await self.o.db(self.o.records.get_media, sha)
        if media is None or media.thumb_sha256 is None:
            raise HTTPError(404, "not_found", "no such thumbnail", headers=MISSING)
        return await serve_blob(request, self.o.store, media.thumb_sha256, OCTETS,
                                MEDIA_CACHE_CONTROL)  # fmt: skip

    async def put_profile_photo(self, request: Request) -> Response:
        """``PUT /v1/profile/{user}/photo``: store the photo, point the user at it."""
        user = request.path_params["user"]
        caller = self.o.user(request)
        if not USER.fullmatch(user):
            raise HTTPError(400, "invalid_field", "user must match [A-Za-z0-9_.-]{1,64}",
                            field="user")  # fmt: skip
        if caller != user:
            raise HTTPError(403, "forbidden", "only the user may set their profile photo")
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in PROFILE_TYPES:
            raise HTTPError(415, "unsupported_media_type", "a profile photo must be one of "
                            + ", ".join(PROFILE_TYPES), allowed=list(PROFILE_TYPES))  # fmt: skip
        too_large = HTTPError(413, "too_large", f"a profile photo is at most "
                              f"{MAX_PROFILE_PHOTO} bytes", max_size=MAX_PROFILE_PHOTO)  # fmt: skip
        if (int_or_none(request.headers.get("content-length")) or 0) > MAX_PROFILE_PHOTO:
            raise too_large
        staged, body = f"pp-{secrets.token_hex(8)}.part", Body(request)
        try:
            async with self.o.staging.writer(staged) as writer:
                received, sha = await writer.write(body, MAX_PROFILE_PHOTO)
        except TooLarge:
            raise too_large from None
        if received == 0 or body.disconnected:
            await self.o.staging.remove(staged)
            raise HTTPError(400, "empty_body", "no complete photo was received")
        await self.o.store.commit(sha, self.o.staging.path(staged))
        await self.o.db(self.o.records.set_profile_photo, user, sha, ctype, received)
        return JSONResponse({"user": user, "sha256": sha, "size": received,
                             "url": f"{self.o.public}/pp/{user}"})  # fmt: skip

    async def get_profile_photo(self, request: Request) -> Response:
        """``GET|HEAD /pp/{user}``: the user's current profile photo."""
        user = request.path_params["user"]
        photo = None
        if USER.fullmatch(user):
            photo = await self.o.db(self.o.records.get_profile_photo, user)
        if photo is None:
            raise HTTPError(404, "not_found", "no profile photo")
        return await serve_blob(request, self.o.store, photo.sha256, photo.content_type,
                                PROFILE_CACHE_CONTROL, modified=photo.updated_at)  # fmt: skip
