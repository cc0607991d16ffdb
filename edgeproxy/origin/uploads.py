"""The signed upload URL ``/v1/upload/{media_id}?expires=…&size=…&sig=…``: every way to send,
resume, inspect and abandon an upload's bytes.

The URL is the credential (a signed capability, as in seed 000): no JWT is needed. If a request
carries one anyway it must be valid and name the upload's owner (403 otherwise). The URL must be
first used within ``origin.upload_url_ttl``; once bytes have arrived the upload stays resumable
until ``origin.upload_expiry`` after its creation (``Upload-Expires``).

- ``PUT`` without ``X-Upload-Offset``: the whole blob, replacing any partial bytes (then
  written as an append at 0, so it is checkpointed and resumable like the others).
- ``PUT`` with ``X-Upload-Offset: N`` (seed 000's resumable upload): append from N.
- ``PATCH`` with ``Upload-Offset: N`` (tus core, optionally ``Upload-Checksum``): append from N.
- ``HEAD``: the offset to resume from (``X-Upload-Offset`` and tus ``Upload-Offset``).
- ``DELETE``: terminate an unfinished upload (tus termination); its bytes are removed.

An offset other than the server's → 409 with the current offset in the body and the headers,
nothing changed. A body cut off mid-way keeps every byte that arrived (fsynced before the offset
is recorded), so the client resumes from there. A long body's offset is also recorded as it
arrives (`staging.CHECKPOINT`, or each part stored in S3): a crash of the origin mid-body
loses only what came after the last one, and HEAD shows the upload moving meanwhile.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import HTTPError
from ..signing import BadSignature, SignatureExpired
from .core import GONE, OriginCore, http_date
from .http import Body, int_or_none
from .media_api import MEDIA_ID
from .records import Upload, UploadState
from .staging import ChecksumMismatch, StagingBusy, StagingShort, TooLarge
from .tus import (
    CHECKSUM_MISMATCH,
    OFFSET_CONTENT_TYPE,
    check_version,
    parse_checksum,
    tus_headers,
)
from .uploadlocks import IN_PROGRESS


def _offset_headers(upload: Upload) -> dict[str, str]:
    headers = {"X-Upload-Offset": str(upload.received), "Upload-Offset": str(upload.received),
               "Upload-Length": str(upload.declared_size)}  # fmt: skip
    if upload.state in (UploadState.PENDING, UploadState.UPLOADED):
        headers["Upload-Expires"] = http_date(upload.expires)
    return headers


def offset_mismatch(upload: Upload, given: int) -> HTTPError:
    """409: the client's offset is not where the upload stands; nothing was changed."""
    return HTTPError(409, "offset_mismatch", f"the upload is at offset {upload.received}, "
                     f"not {given}", offset=upload.received, given=given,
                     headers=tus_headers(**_offset_headers(upload)))  # fmt: skip


def check_writable(upload: Upload) -> None:
    """409/410 unless ``upload`` still wants bytes."""
    if upload.state in (UploadState.UPLOADED, UploadState.COMMITTED):
        raise HTTPError(409, "already_uploaded", "this upload has already been received")
    if upload.state is UploadState.FAILED:
        if upload.failure in GONE:
            raise HTTPError(410, *GONE[upload.failure])
        raise HTTPError(409, "upload_failed", "this upload failed its checks",
                        reason=upload.failure)  # fmt: skip


def _check_deletable(upload: Upload) -> None:
    """409/410 unless ``upload`` is unfinished, so a DELETE may terminate it."""
    if upload.state is UploadState.COMMITTED:
        raise HTTPError(409, "already_committed", "committed media is never deleted by "
                        "the server (seed 000: clients delete locally)")  # fmt: skip
    if upload.state is UploadState.FAILED:
        raise HTTPError(410, "upload_failed", "this upload is already over",
                        reason=upload.failure)  # fmt: skip


class UploadURL:
    """Handlers of the signed upload URL."""

    def __init__(self, core: OriginCore) -> None:
        self.o = core

    async def _authorise(self, request: Request) -> Upload:
        """The upload the signed URL opens; 403 bad signature or foreign token, 404, 410."""
        media_id = request.path_params["media_id"]
        q = request.query_params
        expires, size, sig = int_or_none(q.get("expires")), int_or_none(q.get("size")), q.get("sig")
        bad_sig = HTTPError(403, "bad_signature", "the upload URL's signature is not valid")
        if expires is None or size is None or not sig or not MEDIA_ID.fullmatch(media_id):
            raise bad_sig
        now = self.o.clock()
        url_expired = False
        try:
            self.o.key.verify_request("PUT", f"/v1/upload/{media_id}", expires, sig, size,
                                      now=now)  # fmt: skip
        except SignatureExpired:
            url_expired = True
        except BadSignature:
            raise bad_sig from None
        upload = await self.o.db(self.o.records.get_upload, media_id)
        if upload is None:
            raise HTTPError(404, "not_found", f"no upload {media_id}")
        if upload.expires_at != expires or upload.declared_size != size:
            raise bad_sig  # signed by us, but not for this upload's record
        principal = self.o.auth.optional(request.headers.get("authorization"))
        if principal is not None:
            self.o.check_owner(upload, principal.user)
        unfinished = upload.state in (UploadState.PENDING, UploadState.UPLOADED)
        # The URL's short TTL bounds when an upload may *start*; a started one may resume.
        if (url_expired and upload.received == 0) or (unfinished and upload.is_expired(now)):
            raise HTTPError(410, "upload_expired", "the upload URL has expired")
        return upload

    # --- PUT (seed protocol) -------------------------------------------------------------------

    async def put(self, request: Request) -> Response:
        """``PUT``: the whole blob, or (with ``X-Upload-Offset``) the rest of it."""
        upload = await self._authorise(request)
        header = request.headers.get("x-upload-offset")
        if header is None:
            # The whole blob is an append at 0 that first drops any partial bytes: one path
            # for every body, so this one is checkpointed as it arrives like the others.
            upload = await self._append(request, upload, 0, restart=True)
        else:
            offset = int_or_none(header)
            if offset is None:
                raise HTTPError(400, "bad_request", "X-Upload-Offset must be a non-negative "
                                "integer", field="X-Upload-Offset")  # fmt: skip
            upload = await self._append(request, upload, offset)
        return JSONResponse({"media_id": upload.media_id, "received": upload.received,
                             "complete": upload.complete},
                            headers=_offset_headers(upload))  # fmt: skip

    async def write_at(self, request: Request, upload: Upload, offset: int,
                       checksum: tuple[str, bytes] | None = None) -> Upload:  # fmt: skip
        """Append ``request``'s body to ``upload`` at ``offset`` (also tus creation-with-upload)."""
        return await self._append(request, upload, offset, checksum)

    async def _append(self, request: Request, upload: Upload, offset: int,
                      checksum: tuple[str, bytes] | None = None, *,
                      restart: bool = False) -> Upload:  # fmt: skip
        """Write the body at ``offset``; 409 if that is not the upload's offset. ``restart``
        (a whole-blob PUT, ``offset`` 0): drop any partial bytes first instead."""
        check_writable(upload)
        media_id = upload.media_id
        if offset != upload.received and not restart:
            raise offset_mismatch(upload, offset)
        room = upload.declared_size - offset
        length = int_or_none(request.headers.get("content-length"))
        if length is not None and length > room:
            raise HTTPError(413, "too_large", f"body exceeds the {room} bytes still expected",
                            declared=upload.declared_size, offset=offset)  # fmt: skip
        assert upload.staging_name is not None
        try:
            async with (self.o.locks.hold(media_id, wait=False),
                        self.o.upload_writer(upload.staging_name) as writer):  # fmt: skip
                current = await self.o.db(self.o.records.get_upload, media_id)
                assert current is not None
                check_writable(current)  # a request that held the lock may have finished it
                if restart and current.received:
                    # The record drops to 0 before the staged bytes go: it must never claim
                    # bytes the staging no longer has.
                    await self.o.db(self.o.records.record_progress, media_id, 0, None)
                    await writer.restart()
                elif offset != current.received:  # another request moved it meanwhile
                    raise offset_mismatch(current, offset)
                async def progress(total: int) -> None:  # (a checkpoint of a long body)
                    await self.o.db(self.o.records.record_progress, media_id, total, None)

                received, digest = await writer.append(Body(request), offset, room, checksum,
                                                       progress)
                total = offset + received
                # The digest covers only this body: it is the blob's hash only from offset 0.
                whole = digest if offset == 0 and total == upload.declared_size else None
                await self.o.db(self.o.records.record_progress, media_id, total, whole)
        except StagingBusy:
            raise IN_PROGRESS from None
        except StagingShort as exc:
            # The record claimed bytes the disk does not have: trust the disk, say where it is.
            await self.o.db(self.o.records.record_progress, media_id, exc.size, None)
            raise offset_mismatch(await self._reload(media_id), offset) from None
        except TooLarge:
            raise HTTPError(413, "too_large", f"body exceeds the {room} bytes still expected",
                            declared=upload.declared_size, offset=offset) from None  # fmt: skip
        except ChecksumMismatch as exc:
            raise HTTPError(CHECKSUM_MISMATCH, "checksum_mismatch", f"{exc}; the chunk was "
                            "discarded", offset=offset,
                            headers=tus_headers(**_offset_headers(upload))) from None  # fmt: skip
        self.o.metrics.received_bytes.inc(received)
        return await self._reload(media_id)

    async def _reload(self, media_id: str) -> Upload:
        upload = await self.o.db(self.o.records.get_upload, media_id)
        assert upload is not None
        return upload

    # --- tus core, and HEAD for both -----------------------------------------------------------

    async def patch(self, request: Request) -> Response:
        """``PATCH`` (tus): append the body at ``Upload-Offset``."""
        check_version(request, required=True)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != OFFSET_CONTENT_TYPE:
            raise HTTPError(415, "unsupported_media_type", f"a PATCH body must be "
                            f"{OFFSET_CONTENT_TYPE}", headers=tus_headers())  # fmt: skip
        offset = int_or_none(request.headers.get("upload-offset"))
        if offset is None:
            raise HTTPError(400, "bad_request", "Upload-Offset must be a non-negative integer",
                            field="Upload-Offset", headers=tus_headers())  # fmt: skip
        checksum = parse_checksum(request.headers.get("upload-checksum"))
        upload = await self._authorise(request)
        upload = await self._append(request, upload, offset, checksum)
        return Response(status_code=204, headers=tus_headers(**_offset_headers(upload)))

    async def head(self, request: Request) -> Response:
        """``HEAD``: where to resume (seed ``X-Upload-Offset``, tus ``Upload-Offset``)."""
        check_version(request, required=False)
        upload = await self._authorise(request)
        if upload.state is UploadState.FAILED:
            gone = upload.failure in GONE
            raise HTTPError(410 if gone else 409, "upload_failed", "this upload is over",
                            reason=upload.failure, headers=tus_headers())  # fmt: skip
        return Response(status_code=200, headers=tus_headers(**_offset_headers(upload)))

    async def delete(self, request: Request) -> Response:
        """``DELETE`` (tus termination): drop an unfinished upload and its bytes."""
        check_version(request, required=False)
        upload = await self._authorise(request)
        _check_deletable(upload)
        name = upload.staging_name or f"{upload.media_id}.part"
        try:
            async with (self.o.locks.hold(upload.media_id, wait=False),
                        self.o.upload_writer(name)):  # fmt: skip
                # (Removing is harmless if a confirm committed it meanwhile: a committed
                # upload owns no staging file.)
                await self.o.upload_staging.remove(name)
                if not await self.o.db(self.o.records.mark_failed, upload.media_id,
                                       "terminated"):  # fmt: skip
                    # A confirm (in another worker) ended it after this DELETE first read
                    # it: say what it did.
                    _check_deletable(await self._reload(upload.media_id))
        except StagingBusy:
            raise IN_PROGRESS from None
        self.o.metrics.count("terminated")
        return Response(status_code=204, headers=tus_headers())
