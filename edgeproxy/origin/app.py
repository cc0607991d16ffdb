"""The bundled upload origin: signed direct upload, confirm, and serving committed blobs.

Flow: ``POST /v1/media/upload/request`` returns a signed, expiring PUT URL; the client streams
the encrypted blob to ``PUT /v1/upload/{media_id}`` (staged on disk, hashed on the way);
``POST /v1/media/upload/confirm`` checks size, SHA-256 and blob layout and commits the blob,
content-addressed, to the `BlobStore`; ``GET /v/t1/{sha256}`` (and ``/thumb``) serves it with
Range support to shields and edges. Profile photos are ``PUT /v1/profile/{user}/photo`` and
``GET /pp/{user}``. Metadata lives in SQLite (`Records`), so a restarted origin carries on.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import math
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import Config
from ..crypto import check_blob_layout
from ..errors import BlobFormatError, HTTPError
from ..responses import install_error_handlers
from ..signing import BadSignature, SignatureExpired, SigningKey
from .blobstore import SHA256_HEX, BlobStore, LocalBlobStore, Staging, StagingBusy, TooLarge
from .http import Body, field, int_or_none, read_json, serve_blob, sha256_field
from .records import Records, Upload, UploadState

P = ParamSpec("P")
T = TypeVar("T")

MEDIA_ID = re.compile(r"m_[A-Za-z0-9_-]{8,64}")
USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIME_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")
PROFILE_TYPES = ("image/jpeg", "image/png", "image/webp")
MAX_PROFILE_PHOTO = 5 * 1024**2
MAX_JSON_BODY = 64 * 1024  # request bodies other than the thumbnail-carrying confirm
MEDIA_CACHE_CONTROL = "public, max-age=31536000, immutable"
PROFILE_CACHE_CONTROL = "public, max-age=86400"
OCTETS = "application/octet-stream"  # media is encrypted: its type is nobody's business


IN_PROGRESS = HTTPError(409, "upload_in_progress", "another request is using this upload")


class _UploadLocks:
    """Per-upload asyncio locks that disappear when nobody holds or awaits them."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key: str, *, wait: bool) -> AsyncIterator[None]:
        """Hold ``key``'s lock; with ``wait=False`` answer 409 at once if anyone has it."""
        # Counting users (not Lock.locked()) also sees a waiter the lock was just handed to.
        if not wait and self._users[key]:
            raise IN_PROGRESS
        self._users[key] += 1
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]


class _Rejected(Exception):
    """A confirm check failed: the upload is failed and answered 422."""

    def __init__(self, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.error = HTTPError(422, error, message, **extra)


class Origin:
    """State and handlers of one origin app (see `create_app`)."""

    def __init__(self, config: Config, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.key = SigningKey.from_text(config.origin.signing_key)
        self.root = config.data_dir / "origin"
        self.staging = Staging(self.root / "staging")
        self.store: BlobStore = LocalBlobStore(self.root / "blobs")
        self._records: Records | None = None
        self.locks = _UploadLocks()
        self.public = config.public_base_url.rstrip("/")

    @property
    def records(self) -> Records:
        """The metadata database (open between lifespan startup and shutdown)."""
        if self._records is None:
            raise RuntimeError("the origin app is not started (run it with lifespan on)")
        return self._records

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Open the database for the app's lifetime."""
        self._records = await asyncio.to_thread(Records, self.root / "origin.sqlite3")
        try:
            yield
        finally:
            self._records.close()
            self._records = None

    async def db(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a `Records` call in a worker thread (SQLite fsyncs must not block the loop)."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # --- upload ------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness probe."""
        return JSONResponse({"status": "ok", "role": "origin"})

    async def request_upload(self, request: Request) -> Response:
        """``POST /v1/media/upload/request``: record an upload, hand out a signed PUT URL."""
        body = await read_json(request, MAX_JSON_BODY)
        size = field(body, "file_size", int)
        file_type = field(body, "file_type", str)
        file_hash = field(body, "file_hash", str)
        if size <= 0:
            raise HTTPError(422, "invalid_field", "file_size must be positive", field="file_size")
        limit = self.config.origin.max_upload_size
        if size > limit:
            raise HTTPError(413, "too_large", f"file_size exceeds {limit} bytes",
                            field="file_size", max_size=limit)  # fmt: skip
        if not MIME_TYPE.fullmatch(file_type):
            raise HTTPError(422, "invalid_field", "file_type must be a MIME type such as "
                            "image/jpeg", field="file_type")  # fmt: skip
        sha = sha256_field(file_hash, "file_hash")
        media_id = "m_" + secrets.token_urlsafe(16)
        # Rounded up so a URL is never valid for less than the configured TTL.
        expires = math.ceil(self.clock() + self.config.origin.upload_url_ttl)
        path = f"/v1/upload/{media_id}"
        sig = self.key.sign_request("PUT", path, expires, size)
        await self.db(self.records.create_upload, media_id, file_type=file_type.lower(),
                      declared_size=size, declared_sha256=sha, expires_at=expires,
                      staging_name=f"{media_id}.part")  # fmt: skip
        return JSONResponse({
            "media_id": media_id,
            "upload_url": f"{self.config.origin.base_url}{path}?expires={expires}&size={size}"
                          f"&sig={sig}",
            "upload_expires": datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        })  # fmt: skip

    async def put_upload(self, request: Request) -> Response:
        """``PUT /v1/upload/{media_id}``: stream the blob into staging."""
        media_id = request.path_params["media_id"]
        q = request.query_params
        expires, size, sig = int_or_none(q.get("expires")), int_or_none(q.get("size")), q.get("sig")
        bad_sig = HTTPError(403, "bad_signature", "the upload URL's signature is not valid")
        if expires is None or size is None or not sig or not MEDIA_ID.fullmatch(media_id):
            raise bad_sig
        try:
            self.key.verify_request("PUT", f"/v1/upload/{media_id}", expires, sig, size,
                                    now=self.clock())  # fmt: skip
        except SignatureExpired:
            raise HTTPError(410, "upload_expired", "the upload URL has expired") from None
        except BadSignature:
            raise bad_sig from None
        upload = await self.db(self.records.get_upload, media_id)
        if upload is None:
            raise HTTPError(404, "not_found", f"no upload {media_id}")
        if upload.expires_at != expires or upload.declared_size != size:
            raise bad_sig  # signed by us, but not for this upload's record
        self._check_writable(upload)
        length = request.headers.get("content-length")
        if length is not None and (int_or_none(length) or 0) > size:
            # Refused before reading a byte: the client said up front it would send too much.
            raise HTTPError(413, "too_large", f"body exceeds the declared {size} bytes",
                            declared=size)  # fmt: skip
        assert upload.staging_name is not None
        try:
            async with (self.locks.hold(media_id, wait=False),
                        self.staging.writer(upload.staging_name) as writer):  # fmt: skip
                upload = await self.db(self.records.get_upload, media_id)
                assert upload is not None
                self._check_writable(upload)  # a PUT that held the lock may have finished it
                # The record drops to 0 before the file is truncated: it must never claim
                # bytes the staging file no longer has.
                await self.db(self.records.record_progress, media_id, 0, None)
                received, digest = await writer.write(Body(request), size)
                complete = received == size
                await self.db(self.records.record_progress, media_id, received,
                              digest if complete else None)  # fmt: skip
        except StagingBusy:
            raise IN_PROGRESS from None
        except TooLarge:
            raise HTTPError(413, "too_large", f"body exceeds the declared {size} bytes",
                            declared=size) from None  # fmt: skip
        return JSONResponse({"media_id": media_id, "received": received, "complete": complete})

    @staticmethod
    def _check_writable(upload: Upload) -> None:
        if upload.state in (UploadState.UPLOADED, UploadState.COMMITTED):
            raise HTTPError(409, "already_uploaded", "this upload has already been received")
        if upload.state is UploadState.FAILED:
            raise HTTPError(409, "upload_failed", "this upload failed its checks",
                            reason=upload.failure)  # fmt: skip

    # --- confirm -----------------------------------------------------------------------------

    async def confirm_upload(self, request: Request) -> Response:
        """``POST /v1/media/upload/confirm``: check the staged blob, commit it, answer its URL."""
        # A confirm carries the thumbnail as base64 (4 bytes per 3), plus the other fields.
        limit = self.config.origin.max_thumbnail_size * 4 // 3 + MAX_JSON_BODY
        body = await read_json(request, limit)
        media_id = field(body, "media_id", str)
        file_sha = sha256_field(field(body, "file_sha256", str), "file_sha256")
        thumb_b64 = field(body, "thumbnail_base64", str, required=False)
        if await self.db(self.records.get_upload, media_id) is None:
            raise HTTPError(404, "not_found", f"no upload {media_id}")
        # Waits out a PUT or another confirm of this upload, then sees what they left.
        async with self.locks.hold(media_id, wait=True):
            upload = await self.db(self.records.get_upload, media_id)
            assert upload is not None
            if upload.state is UploadState.COMMITTED:
                if file_sha != upload.blob_sha256:  # answered, but the commit stands
                    raise HTTPError(422, "hash_mismatch", "file_sha256 differs from the "
                                    "committed blob")  # fmt: skip
                return self._confirmed(upload)
            if upload.state is UploadState.FAILED:
                raise HTTPError(409, "upload_failed", "this upload failed its checks",
                                reason=upload.failure)  # fmt: skip
            if upload.state is UploadState.PENDING:
                raise HTTPError(409, "upload_incomplete", "not every byte has been uploaded",
                                declared=upload.declared_size,
                                received=upload.received)  # fmt: skip
            try:
                upload = await self._commit(upload, file_sha, thumb_b64)
            except _Rejected as exc:
                if upload.staging_name:
                    await self.staging.remove(upload.staging_name)
                await self.db(self.records.mark_failed, media_id, exc.error.error)
                raise exc.error from None
        return self._confirmed(upload)

    def _confirmed(self, upload: Upload) -> Response:
        media_url = f"{self.public}/v/t1/{upload.blob_sha256}"
        return JSONResponse({"media_url": media_url,
                             "thumbnail_url": f"{media_url}/thumb" if upload.thumb_sha256
                             else None})  # fmt: skip

    async def _commit(self, upload: Upload, file_sha: str, thumb_b64: str | None) -> Upload:
        """Check the staged blob and thumbnail, then commit both; `_Rejected` on a mismatch."""
        sha, size = upload.declared_sha256, upload.declared_size
        if file_sha != sha:
            raise _Rejected("hash_mismatch", "file_sha256 differs from the declared file_hash",
                            declared=sha, given=file_sha)  # fmt: skip
        staged = upload.staging_name or f"{upload.media_id}.part"
        on_disk = await self.staging.size(staged) or 0
        # A staging file gone while the blob is stored means an earlier confirm crashed
        # between moving the blob and recording it: the blob was verified, finish the job.
        resume = on_disk == 0 and await self.store.exists(sha)
        if not resume:
            if on_disk != size:
                raise _Rejected("size_mismatch", f"received {on_disk} bytes, declared {size}",
                                declared=size, received=on_disk)  # fmt: skip
            # The hash taken while streaming, or (after a resumed upload) a fresh one.
            actual = upload.received_sha256 or await self.staging.sha256(staged)
            if actual != sha:
                raise _Rejected("hash_mismatch", "the received bytes do not hash to file_hash",
                                declared=sha, actual=actual)  # fmt: skip
            try:
                check_blob_layout(await self.staging.head(staged, 16), size)
            except BlobFormatError as exc:
                raise _Rejected("bad_format", f"not a valid blob: {exc}", reason=str(exc)) from None
        thumb = self._decode_thumbnail(thumb_b64) if thumb_b64 is not None else None
        thumb_sha = None
        if thumb is not None:
            thumb_sha = hashlib.sha256(thumb).hexdigest()
            thumb_file = await self.staging.write_bytes(f"{upload.media_id}.thumb", thumb)
            await self.store.commit(thumb_sha, thumb_file)
        if not resume:
            await self.store.commit(sha, self.staging.path(staged))
        await self.db(self.records.commit_upload, upload.media_id, sha, size, thumb_sha)
        committed = await self.db(self.records.get_upload, upload.media_id)
        assert committed is not None
        return committed

    def _decode_thumbnail(self, text: str) -> bytes:
        limit = self.config.origin.max_thumbnail_size
        if len(text) > (limit + 2) // 3 * 4:  # refuse before decoding an oversized string
            raise _Rejected("bad_thumbnail", f"thumbnail exceeds {limit} bytes",
                            reason="too_large", max_size=limit)  # fmt: skip
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _Rejected("bad_thumbnail", "thumbnail_base64 is not valid base64",
                            reason="bad_base64") from None  # fmt: skip
        if len(data) > limit:
            raise _Rejected("bad_thumbnail", f"thumbnail exceeds {limit} bytes",
                            reason="too_large", max_size=limit)  # fmt: skip
        try:
            check_blob_layout(data[:16], len(data))
        except BlobFormatError as exc:
            raise _Rejected("bad_thumbnail", f"thumbnail is not a valid blob: {exc}",
                            reason=str(exc)) from None  # fmt: skip
        return data

    # --- profile photos ------------------------------------------------------------------------

    async def put_profile_photo(self, request: Request) -> Response:
        """``PUT /v1/profile/{user}/photo``: store the photo, point the user at it."""
        user = request.path_params["user"]
        if not USER.fullmatch(user):
            raise HTTPError(400, "invalid_field", "user must match [A-Za-z0-9_.-]{1,64}",
                            field="user")  # fmt: skip
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
            async with self.staging.writer(staged) as writer:
                received, sha = await writer.write(body, MAX_PROFILE_PHOTO)
        except TooLarge:
            raise too_large from None
        if received == 0 or body.disconnected:
            await self.staging.remove(staged)
            raise HTTPError(400, "empty_body", "no complete photo was received")
        await self.store.commit(sha, self.staging.path(staged))
        await self.db(self.records.set_profile_photo, user, sha, ctype, received)
        return JSONResponse({"user": user, "sha256": sha, "size": received,
                             "url": f"{self.public}/pp/{user}"})  # fmt: skip

    # --- serving -------------------------------------------------------------------------------

    async def get_media(self, request: Request) -> Response:
        """``GET|HEAD /v/t1/{sha}``: a committed media blob."""
        sha = request.path_params["sha"]
        if SHA256_HEX.fullmatch(sha) and await self.db(self.records.get_media, sha) is not None:
            return await serve_blob(request, self.store, sha, OCTETS, MEDIA_CACHE_CONTROL)
        raise HTTPError(404, "not_found", "no such media")

    async def get_thumbnail(self, request: Request) -> Response:
        """``GET|HEAD /v/t1/{sha}/thumb``: the thumbnail committed with a media blob."""
        sha = request.path_params["sha"]
        media = None
        if SHA256_HEX.fullmatch(sha):
            media = await self.db(self.records.get_media, sha)
        if media is None or media.thumb_sha256 is None:
            raise HTTPError(404, "not_found", "no such thumbnail")
        return await serve_blob(request, self.store, media.thumb_sha256, OCTETS,
                                MEDIA_CACHE_CONTROL)  # fmt: skip

    async def get_profile_photo(self, request: Request) -> Response:
        """``GET|HEAD /pp/{user}``: the user's current profile photo."""
        user = request.path_params["user"]
        photo = None
        if USER.fullmatch(user):
            photo = await self.db(self.records.get_profile_photo, user)
        if photo is None:
            raise HTTPError(404, "not_found", "no profile photo")
        return await serve_blob(request, self.store, photo.sha256, photo.content_type,
                                PROFILE_CACHE_CONTROL, modified=photo.updated_at)  # fmt: skip


def create_app(config: Config, *, clock: Callable[[], float] = time.time) -> Starlette:
    """The origin ASGI app for ``config`` (data under ``config.data_dir / "origin"``).

    ``clock`` (unix seconds) is injectable so tests can expire upload URLs without sleeping.
    The database opens in the app's lifespan, so serve it with lifespan enabled.
    """
    origin = Origin(config, clock)
    get = ["GET", "HEAD"]
    routes = [
        Route("/healthz", origin.healthz, methods=get),
        Route("/v1/media/upload/request", origin.request_upload, methods=["POST"]),
        Route("/v1/upload/{media_id}", origin.put_upload, methods=["PUT"]),
        Route("/v1/media/upload/confirm", origin.confirm_upload, methods=["POST"]),
        Route("/v1/profile/{user}/photo", origin.put_profile_photo, methods=["PUT"]),
        Route("/v/t1/{sha}", origin.get_media, methods=get),
        Route("/v/t1/{sha}/thumb", origin.get_thumbnail, methods=get),
        Route("/pp/{user}", origin.get_profile_photo, methods=get),
    ]
    app = Starlette(routes=routes, lifespan=origin.lifespan)
    app.state.origin = origin
    install_error_handlers(app)
    return app
