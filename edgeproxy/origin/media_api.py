"""The authenticated media API: request an upload, confirm it, get a signed download URL.

``POST /v1/media/upload/request`` checks type, size, rate limits and quota and hands out a
signed upload URL (the tus creation call in `edgeproxy.origin.tus` shares `MediaAPI.create`);
``POST /v1/media/upload/confirm`` checks size, SHA-256 and blob layout and commits the blob,
content-addressed, so the same bytes confirmed twice are kept once; ``GET
/v1/media/{media_id}/content`` answers a signed, expiring download URL (seed 004).
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..crypto import check_blob_layout
from ..errors import BlobFormatError, HTTPError
from .auth import Principal
from .core import DIRECT, GONE, OriginCore, iso_utc
from .http import field, read_json, sha256_field
from .limits import LimitExceeded, check_file_name, check_size, check_type
from .records import Upload, UploadState
from .s3store import StagedMismatch
from .thumbnails import Rejected, decode_thumbnail

MEDIA_ID = re.compile(r"m_[A-Za-z0-9_-]{8,64}")
# RFC 6838 §4.2 restricted-name, ASCII only (``\w`` let in word characters of any script)
_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
MIME_TYPE = re.compile(f"{_NAME}/{_NAME}")
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
MAX_JSON_BODY = 64 * 1024  # request bodies other than the thumbnail-carrying confirm
NO_STORE = {"Cache-Control": "no-store"}
# How long a confirm waits for another request holding its complete upload (another confirm
# hashing up to max_upload_size, a DELETE, the sweeper) before answering 409 upload_in_progress.
CONFIRM_WAIT = 30.0


@dataclass(frozen=True)
class NewUpload:
    """A recorded upload and the signed URL its bytes go to."""

    media_id: str
    upload_url: str
    expires_at: int  # the URL must be first used by then (origin.upload_url_ttl)
    resume_until: int  # once started, resumable until then (origin.upload_expiry)
    # Direct upload: headers the PUT must carry (the presigned URL signs them).
    upload_headers: dict[str, str] | None = None

    def json(self) -> dict[str, Any]:
        """The answer to an upload request."""
        answer: dict[str, Any] = {"media_id": self.media_id, "upload_url": self.upload_url,
                  "upload_expires": iso_utc(self.expires_at),
                  "resumable_until": iso_utc(self.resume_until)}  # fmt: skip
        if self.upload_headers is not None:
            # A single PUT straight to the bucket: no offsets to resume from.
            answer |= {"upload_method": "direct", "upload_headers": self.upload_headers,
                       "resumable_until": iso_utc(self.expires_at)}  # fmt: skip
        return answer


def _protocol(method: str | None) -> str:
    """``upload_method``: "direct" (the default: into the bucket when the store is one) or
    "resumable" (through the origin, with the seed's X-Upload-Offset protocol)."""
    if method in (None, "direct"):
        return "signed-put"
    if method == "resumable":
        return "resumable"
    raise HTTPError(422, "invalid_field", 'upload_method must be "direct" or "resumable"',
                    field="upload_method")  # fmt: skip


class MediaAPI:
    """Handlers of the ``/v1/media`` calls."""

    def __init__(self, core: OriginCore) -> None:
        self.o = core

    # --- request -------------------------------------------------------------------------------

    async def request_upload(self, request: Request) -> Response:
        """``POST /v1/media/upload/request``: record an upload, hand out a signed PUT URL."""
        user = self.o.principal(request)
        body = await read_json(request, MAX_JSON_BODY)
        new = await self.create(
            user, size=field(body, "file_size", int), file_type=field(body, "file_type", str),
            file_hash=field(body, "file_hash", str),
            conversation_id=field(body, "conversation_id", str, required=False),
            file_name=field(body, "file_name", str, required=False),
            protocol=_protocol(field(body, "upload_method", str, required=False)),
        )  # fmt: skip
        return JSONResponse(new.json(), headers=NO_STORE)

    async def create(self, user: str | Principal, *, size: int, file_type: str, file_hash: str,
                     conversation_id: str | None, file_name: str | None,
                     protocol: str) -> NewUpload:  # fmt: skip
        """Validate an upload's declared facts against the limits, then record it.

        Every refusal happens here, before any byte of the body can be stored: 422 for a
        malformed field, 403 for a non-participant of the conversation (503 if the authorizer
        cannot say), 415 for a refused type, 413 for a size over its limit, 429 past a rate
        limit, 507 past the quota.
        """
        if size <= 0:
            raise HTTPError(422, "invalid_field", "file_size must be positive", field="file_size")
        if not MIME_TYPE.fullmatch(file_type):
            raise HTTPError(422, "invalid_field", "file_type must be a MIME type such as "
                            "image/jpeg", field="file_type")  # fmt: skip
        sha = sha256_field(file_hash, "file_hash")
        if file_name is not None:
            check_file_name(file_name)
        if conversation_id is not None and not CONVERSATION_ID.fullmatch(conversation_id):
            raise HTTPError(422, "invalid_field", "conversation_id must match "
                            "[A-Za-z0-9_.:-]{1,128}", field="conversation_id")  # fmt: skip
        who = user if isinstance(user, Principal) else Principal(user, {})
        user = who.user
        if conversation_id is not None and self.o.access.enabled:
            await self.o.access.check(who, "upload", conversation_id, None)
        limits, now = self.o.config.limits, self.o.clock()
        try:
            check_type(limits, file_type, file_name)
            check_size(limits, file_type, size, self.o.config.origin.max_upload_size)
        except HTTPError as exc:
            self.o.metrics.count(exc.error)
            raise
        media_id = "m_" + secrets.token_urlsafe(16)
        # Rounded up so a URL is never valid for less than the configured TTL.
        expires = math.ceil(now + self.o.config.origin.upload_url_ttl)
        resume_until = max(expires, math.ceil(now + self.o.config.origin.upload_expiry))
        path, staging_name = f"/v1/upload/{media_id}", f"{media_id}.part"
        if self.o.direct is not None:
            staging_name = media_id  # staging/<media_id> in the bucket, however it arrives
        direct = self.o.direct if protocol == "signed-put" else None
        if direct is not None:
            # The record outlives the presigned URL by one more TTL: time to confirm.
            protocol = DIRECT
            resume_until = expires + math.ceil(self.o.config.origin.upload_url_ttl)
        sig = self.o.key.sign_request("PUT", path, expires, size)
        try:
            await self.o.db(self.o.records.create_upload, media_id, file_type=file_type.lower(),
                            declared_size=size, declared_sha256=sha,
                            expires_at=resume_until if direct else expires,
                            staging_name=staging_name, owner=user, protocol=protocol,
                            conversation_id=conversation_id, resume_until=resume_until,
                            allowance=self.o.allowance, now=now)  # fmt: skip
        except LimitExceeded as exc:
            answer = exc.to_http()
            self.o.metrics.count(answer.error)
            raise answer from None
        self.o.metrics.count("created")
        if direct is not None:
            # botocore signs with the real clock, so the TTL itself, not our `expires`.
            ttl = math.ceil(self.o.config.origin.upload_url_ttl)
            url, headers = direct.presign_put(media_id, sha, ttl)
            return NewUpload(media_id, url, expires, resume_until, headers)
        url = f"{self.o.config.origin.base_url}{path}?expires={expires}&size={size}&sig={sig}"
        return NewUpload(media_id, url, expires, resume_until)

    # --- confirm -------------------------------------------------------------------------------

    async def confirm_upload(self, request: Request) -> Response:
        """``POST /v1/media/upload/confirm``: check the staged blob, commit it, answer its URL."""
        user = self.o.user(request)
        # A confirm carries the thumbnail as base64 (4 bytes per 3), plus the other fields.
        limit = self.o.config.origin.max_thumbnail_size * 4 // 3 + MAX_JSON_BODY
        body = await read_json(request, limit)
        media_id = field(body, "media_id", str)
        file_sha = sha256_field(field(body, "file_sha256", str), "file_sha256")
        thumb_b64 = field(body, "thumbnail_base64", str, required=False)
        found = await self._find(media_id)
        self.o.check_owner(found, user)
        # Answered before any lock: an upload still arriving is incomplete now, whoever is
        # sending it and however slowly, so a confirm never waits for a PUT.
        if (answer := self._settled(found, file_sha)) is not None:
            return answer
        staged = found.staging_name or f"{media_id}.part"
        # Complete, so only a confirm, a DELETE or the sweeper can hold it, each briefly: wait
        # for them (a retried confirm then gets the 200 of the first), in any worker process.
        async with self.o.hold_upload(media_id, staged, wait=CONFIRM_WAIT):
            upload = await self.o.db(self.o.records.get_upload, media_id)
            assert upload is not None
            if upload.state in (UploadState.COMMITTED, UploadState.FAILED):
                if self.o.direct is None:  # (the empty file opening it for the lock made)
                    await self.o.staging.remove(staged)
                answer = self._settled(upload, file_sha)  # (200, or raised: 409, 410, 422)
                assert answer is not None
                return answer
            if (answer := self._settled(upload, file_sha)) is not None:
                return answer
            # The thumbnail is optional and the client's: a bad one is refused and the upload
            # stays as it was (its verified bytes are not failed for it).
            try:
                limit = self.o.config.origin.max_thumbnail_size
                thumb = decode_thumbnail(thumb_b64, limit) if thumb_b64 is not None else None
            except Rejected as exc:
                raise exc.error from None
            try:
                committed = await self._commit(upload, file_sha, thumb)
            except Rejected as exc:
                await self.o.discard_staged(upload)
                await self.o.db(self.o.records.mark_failed, media_id, exc.error.error)
                self.o.metrics.count(exc.error.error)
                raise exc.error from None
            if committed is None:  # another worker committed or ended it first
                current = await self.o.db(self.o.records.get_upload, media_id)
                assert current is not None
                answer = self._settled(current, file_sha)
                assert answer is not None  # (no longer unfinished, or the commit had happened)
                return answer
            self.o.metrics.observe_upload(committed.declared_size,
                                          self.o.clock() - committed.created_at)  # fmt: skip
        return self._confirmed(committed)

    def _settled(self, upload: Upload, file_sha: str) -> Response | None:
        """The answer to a confirm of ``upload`` if its state decides it (the 200 of a
        committed one, or raised: 409 incomplete or failed, 410 expired or terminated), or None
        if it is to be checked and committed. PUT and HEAD answer 410 past the same expiry,
        so a confirm does too, whether or not the sweeper has run yet."""
        if upload.state is UploadState.COMMITTED:
            if file_sha != upload.blob_sha256:  # answered, but the commit stands
                raise HTTPError(422, "hash_mismatch", "file_sha256 differs from the "
                                "committed blob")  # fmt: skip
            return self._confirmed(upload)
        if upload.state is UploadState.FAILED:
            if upload.failure in GONE:
                raise HTTPError(410, *GONE[upload.failure], reason=upload.failure)
            raise HTTPError(409, "upload_failed", "this upload failed its checks",
                            reason=upload.failure)  # fmt: skip
        if upload.is_expired(self.o.clock()):
            raise HTTPError(410, *GONE["expired"], reason="expired")
        if upload.state is UploadState.PENDING and upload.protocol != DIRECT:
            raise HTTPError(409, "upload_incomplete", "not every byte has been uploaded",
                            declared=upload.declared_size, received=upload.received)  # fmt: skip
        return None

    def _confirmed(self, upload: Upload) -> Response:
        media_url = f"{self.o.public}/v/t1/{upload.blob_sha256}"
        return JSONResponse({"media_url": media_url,
                             "thumbnail_url": f"{media_url}/thumb" if upload.thumb_sha256
                             else None})  # fmt: skip

    async def _commit(self, upload: Upload, file_sha: str, thumb: bytes | None) -> Upload | None:
        """Check the staged blob and thumbnail, then commit both; `Rejected` on a mismatch,
        None if the record was no longer unfinished when the commit came to be recorded."""
        o, sha, size = self.o, upload.declared_sha256, upload.declared_size
        if file_sha != sha:
            raise Rejected("hash_mismatch", "file_sha256 differs from the declared file_hash",
                            declared=sha, given=file_sha)  # fmt: skip
        staged = upload.staging_name or f"{upload.media_id}.part"
        if o.direct is not None:  # staged in the bucket: a direct PUT or completed multipart
            # (Never "already stored": the staged object outlives the commit's record.)
            await self._check_direct(upload)
            resume, on_disk = False, size
        else:
            on_disk = await o.staging.size(staged) or 0
            # A staging file gone while the blob is stored means an earlier confirm crashed
            # between moving the blob and recording it: the blob was verified, finish the job.
            resume = on_disk == 0 and await o.store.exists(sha)
        if not resume and o.direct is None:
            if on_disk != size:
                raise Rejected("size_mismatch", f"received {on_disk} bytes, declared {size}",
                                declared=size, received=on_disk)  # fmt: skip
            # The hash taken while streaming, or (after a resumed upload) a fresh one.
            actual = upload.received_sha256 or await o.staging.sha256(staged)
            if actual != sha:
                raise Rejected("hash_mismatch", "the received bytes do not hash to file_hash",
                                declared=sha, actual=actual)  # fmt: skip
            try:
                check_blob_layout(await o.staging.head(staged, 16), size)
            except BlobFormatError as exc:
                raise Rejected("bad_format", f"not a valid blob: {exc}", reason=str(exc)) from None
        thumb_sha = None
        if thumb is not None:
            thumb_sha = hashlib.sha256(thumb).hexdigest()
            thumb_file = await o.staging.write_bytes(f"{upload.media_id}.thumb", thumb)
            await o.store.commit(thumb_sha, thumb_file)
        # Store-once: commit() keeps the first copy of the bytes and drops this one.
        if resume:
            fresh = True
        elif o.direct is not None:
            fresh = await self._promote(upload)
        else:
            fresh = await o.store.commit(sha, o.staging.path(staged))
        media = await o.db(o.records.commit_upload, upload.media_id, sha, size, thumb_sha,
                           o.clock())  # fmt: skip
        if o.direct is not None:
            # Only now the commit is recorded: a crash before it left the staged bytes, which
            # a retried confirm checks and promotes again.
            await o.direct.discard(upload.media_id)
        if media is None:
            return None
        if media.thumb_sha256 is not None and o.direct is not None:
            # Shields reading the bucket directly find /v/t1/<sha>/thumb here.
            await o.direct.alias_thumbnail(sha, media.thumb_sha256)
        o.metrics.count("committed" if fresh else "deduplicated")
        committed = await o.db(o.records.get_upload, upload.media_id)
        assert committed is not None
        return committed

    async def _check_direct(self, upload: Upload) -> None:
        """Size and blob header of a direct upload's staged object (HEAD, then a ranged GET
        of the header); 409 if there is none. A blob already stored under the declared hash
        proves nothing: whoever knows a hash could claim it without its bytes, and a profile
        photo or thumbnail stored under it was never checked as media."""
        assert self.o.direct is not None
        size = upload.declared_size
        staged = await self.o.direct.staged(upload.media_id)
        if staged is None:
            raise HTTPError(409, "upload_incomplete", "nothing has been uploaded yet",
                            declared=size, received=0)  # fmt: skip
        if staged.size != size:
            raise Rejected("size_mismatch", f"received {staged.size} bytes, declared {size}",
                            declared=size, received=staged.size)  # fmt: skip
        try:
            check_blob_layout(await self.o.direct.staged_head(upload.media_id, 16), size)
        except BlobFormatError as exc:
            raise Rejected("bad_format", f"not a valid blob: {exc}", reason=str(exc)) from None

    async def _promote(self, upload: Upload) -> bool:
        assert self.o.direct is not None
        try:
            return await self.o.direct.promote(upload.media_id, upload.declared_sha256)
        except StagedMismatch as exc:
            raise Rejected("hash_mismatch", "the uploaded bytes do not hash to file_hash",
                            declared=upload.declared_sha256, actual=exc.actual) from None

    async def _find(self, media_id: str) -> Upload:
        """The upload ``media_id`` names; 404 otherwise.

        An id not of our form is never looked up, nor echoed: it is the client's arbitrary
        text, and a lone surrogate (``"\\ud800"`` in JSON) cannot even be encoded in the
        answer (a 500 before).
        """
        ours = MEDIA_ID.fullmatch(media_id) is not None
        upload = await self.o.db(self.o.records.get_upload, media_id) if ours else None
        if upload is None:
            shown = media_id if ours else "with that media_id"
            raise HTTPError(404, "not_found", f"no upload {shown}")
        return upload

    # --- signed download URL -------------------------------------------------------------------

    async def content(self, request: Request) -> Response:
        """``GET /v1/media/{media_id}/content``: a signed, expiring URL of the committed blob.

        Only the uploader may ask (uploads recorded before authentication have no owner: any
        authenticated user may); for media of a conversation, with conversation access
        configured, any participant may (`OriginCore.check_download`). The URL names the edge
        (``public_base_url``) and carries ``exp``, ``kid`` and ``sig``; an edge checks them
        without asking the origin.
        """
        who = self.o.principal(request)
        media_id = request.path_params["media_id"]
        upload = await self._find(media_id)
        await self.o.check_download(upload, who)
        if upload.state is not UploadState.COMMITTED or upload.blob_sha256 is None:
            raise HTTPError(409, "not_committed", "this upload has not been confirmed",
                            state=str(upload.state))  # fmt: skip
        now = self.o.clock()
        path = f"/v/t1/{upload.blob_sha256}"
        params = self.o.signer.sign_download(path, now)
        exp = int(params["exp"])
        answer: dict[str, Any] = {
            "media_id": media_id,
            "signed_url": f"{self.o.public}{path}?{urlencode(params)}",
            "expires_at": exp,
            "expires": iso_utc(exp),
            "content_type": upload.file_type,
        }
        media = await self.o.db(self.o.records.get_media, upload.blob_sha256)
        if media is not None and media.thumb_sha256 is not None:
            thumb = f"{path}/thumb"
            thumb_params = urlencode(self.o.signer.sign_download(thumb, now))
            answer["thumbnail_signed_url"] = f"{self.o.public}{thumb}?{thumb_params}"
        return JSONResponse(answer, headers=NO_STORE)
