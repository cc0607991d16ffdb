"""tus 1.0.0 (https://tus.io/protocols/resumable-upload) on the origin's uploads.

tus and the seed's own protocol share one upload record and one URL: the signed upload URL.
Creation is ``POST /v1/tus`` with the bearer JWT, ``Upload-Length`` (the encrypted blob's size)
and ``Upload-Metadata`` carrying what ``/v1/media/upload/request`` takes as JSON:

=================  ========================================================================
``filetype``       MIME type (required; ``file_type``/``content_type`` also accepted)
``sha256``         hex SHA-256 of the encrypted blob (required; ``file_hash`` also accepted)
``conversation_id`` optional, for the per-conversation rate limit
``filename``       optional; only its extension is checked (executables are refused)
=================  ========================================================================

The answer's ``Location`` is the signed upload URL; PATCH/HEAD/DELETE go there (handled in
`edgeproxy.origin.uploads`) and need no JWT. The finished upload is confirmed with the normal
``POST /v1/media/upload/confirm``. Extensions: creation, creation-with-upload (a creation
``POST`` whose body is ``application/offset+octet-stream`` stores it as the first bytes and
answers ``Upload-Offset``), expiration (``Upload-Expires``), checksum (``Upload-Checksum``:
sha1, sha256, md5; 460 on mismatch, the chunk dropped), termination (DELETE).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import HTTPError
from .core import OriginCore, http_date
from .http import int_or_none
from .limits import max_blob_size
from .media_api import MediaAPI

if TYPE_CHECKING:
    from .uploads import UploadURL  # which imports this module's helpers

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,expiration,checksum,termination"
CHECKSUM_ALGORITHMS = {"sha1": "sha1", "sha256": "sha256", "md5": "md5"}  # tus name → hashlib
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
CHECKSUM_MISMATCH = 460  # tus checksum extension: "Checksum Mismatch"


def tus_headers(**extra: str) -> dict[str, str]:
    """``Tus-Resumable`` (on every tus response but OPTIONS) plus ``extra``."""
    return {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store", **extra}


def check_version(request: Request, *, required: bool) -> bool:
    """Whether the request speaks tus; 412 if it names a version we do not speak, or names
    none where tus needs one (``required``)."""
    version = request.headers.get("tus-resumable")
    if version is None and not required:
        return False
    if version != TUS_VERSION:
        raise HTTPError(412, "unsupported_tus_version", f"Tus-Resumable must be {TUS_VERSION}",
                        headers={"Tus-Version": TUS_VERSION})  # fmt: skip
    return True


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64(value)`` pairs (value optional)."""
    result: dict[str, str] = {}
    for item in (header or "").split(","):
        if not item.strip():
            continue
        key, _, encoded = item.strip().partition(" ")
        if key in result:  # (tus 1.0.0: "All keys MUST be unique"; the last one won before,
            # over a refused type given first)
            raise HTTPError(400, "bad_metadata", f"Upload-Metadata names {key!r} twice",
                            field=key)
        try:
            value = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise HTTPError(400, "bad_metadata", f"Upload-Metadata value of {key!r} is not "
                            "base64 of UTF-8 text", field=key) from None  # fmt: skip
        result[key] = value
    return result


def parse_checksum(header: str | None) -> tuple[str, bytes] | None:
    """``Upload-Checksum: <algorithm> <base64 digest>`` as (hashlib name, digest)."""
    if header is None:
        return None
    name, _, encoded = header.strip().partition(" ")
    algorithm = CHECKSUM_ALGORITHMS.get(name.lower())
    if algorithm is None:
        raise HTTPError(400, "unsupported_checksum", f"checksum algorithm {name!r} is not "
                        f"supported ({', '.join(CHECKSUM_ALGORITHMS)})")  # fmt: skip
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPError(400, "bad_checksum", "Upload-Checksum digest is not base64") from None
    size = hashlib.new(algorithm).digest_size
    if len(digest) != size:  # (no digest at all, or a truncated one: not a checksum to compare)
        raise HTTPError(400, "bad_checksum", f"Upload-Checksum digest is not a {name.lower()} "
                        f"digest ({size} bytes)")  # fmt: skip
    return algorithm, digest


class TusAPI:
    """tus discovery (OPTIONS) and creation (POST)."""

    def __init__(self, core: OriginCore, media: MediaAPI, uploads: UploadURL) -> None:
        self.o = core
        self.media = media
        self.uploads = uploads

    @property
    def max_size(self) -> int:
        """``Tus-Max-Size``: the largest blob any allowed type may have."""
        limits = self.o.config.limits
        largest = max(limits.max_image_size, limits.max_audio_size, limits.max_video_size,
                      limits.max_document_size, limits.max_archive_size)  # fmt: skip
        return max_blob_size(min(largest, self.o.config.origin.max_upload_size))

    async def options(self, request: Request) -> Response:
        """``OPTIONS``: what this server speaks (no auth, no Tus-Resumable needed)."""
        return Response(status_code=204, headers={
            "Tus-Resumable": TUS_VERSION, "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS, "Tus-Max-Size": str(self.max_size),
            "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        })  # fmt: skip

    async def create(self, request: Request) -> Response:
        """``POST /v1/tus``: record an upload from tus headers; ``Location`` is its URL. With
        an ``application/offset+octet-stream`` body (creation-with-upload) the body is stored
        as the upload's first bytes and ``Upload-Offset`` says how many arrived."""
        check_version(request, required=True)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        with_upload = ctype == OFFSET_CONTENT_TYPE
        checksum = parse_checksum(request.headers.get("upload-checksum")) if with_upload else None
        user = self.o.principal(request)
        if "upload-defer-length" in request.headers:
            raise HTTPError(400, "defer_length_unsupported", "the upload length must be known "
                            "at creation (the blob's hash is declared up front)")  # fmt: skip
        length = int_or_none(request.headers.get("upload-length"))
        if length is None:
            raise HTTPError(400, "bad_request", "Upload-Length must be a non-negative integer",
                            field="Upload-Length")  # fmt: skip
        if length > self.max_size:
            raise HTTPError(413, "too_large", f"Upload-Length exceeds Tus-Max-Size "
                            f"{self.max_size}", max_size=self.max_size)  # fmt: skip
        meta = parse_metadata(request.headers.get("upload-metadata"))
        file_type = meta.get("filetype") or meta.get("file_type") or meta.get("content_type")
        file_hash = meta.get("sha256") or meta.get("file_hash")
        for name, value in (("filetype", file_type), ("sha256", file_hash)):
            if not value:
                raise HTTPError(400, "bad_request", f"Upload-Metadata must carry {name}",
                                field=name)  # fmt: skip
        assert file_type is not None and file_hash is not None
        declared = int_or_none(request.headers.get("content-length"))
        if with_upload and declared is not None and declared > length:
            # Known before anything is recorded: refuse the creation itself, so no upload
            # takes a rate-limit slot or quota for a request that could never succeed.
            raise HTTPError(413, "too_large", f"the body exceeds Upload-Length {length}",
                            declared=length, headers=tus_headers())  # fmt: skip
        new = await self.media.create(
            user, size=length, file_type=file_type, file_hash=file_hash,
            conversation_id=meta.get("conversation_id"), file_name=meta.get("filename"),
            protocol="tus",
        )  # fmt: skip
        headers = tus_headers(Location=new.upload_url, **{
            "Upload-Expires": http_date(new.resume_until), "X-Media-Id": new.media_id})
        if with_upload:
            # The upload exists from here on. If its body fails (460, a chunked body past
            # Upload-Length, a full disk), the error still carries Location and X-Media-Id (as
            # tusd does), so the client HEADs and resumes, or DELETEs it, like any upload.
            upload = await self.o.db(self.o.records.get_upload, new.media_id)
            assert upload is not None
            try:
                upload = await self.uploads.write_at(request, upload, 0, checksum)
            except HTTPError as exc:
                current = await self.o.db(self.o.records.get_upload, new.media_id)
                offset = current.received if current is not None else 0
                exc.headers.update(headers, **{"Upload-Offset": str(offset)})
                exc.extra.setdefault("media_id", new.media_id)
                raise
            headers["Upload-Offset"] = str(upload.received)
        return JSONResponse(new.json(), status_code=201, headers=headers)
