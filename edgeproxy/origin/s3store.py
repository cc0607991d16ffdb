"""Committed blobs in an S3-compatible bucket, and direct uploads into its staging area.

Layout under the location's prefix: ``blobs/<sha256>`` for committed blobs (content-addressed,
never rewritten), ``thumbs/<media sha256>`` for a copy of each media blob's thumbnail (so a
shield reading the bucket maps ``/v/t1/<sha>/thumb`` without the database), and
``staging/<media_id>`` for direct uploads awaiting confirm.

The client is botocore's, called in worker threads: botocore is the reference implementation
of SigV4, presigning and S3 checksums, and one thread hop per call is what `LocalBlobStore`
already pays per disk read. A download streams in `DEFAULT_CHUNK_SIZE` reads, so a large blob
never sits in memory.

Direct upload (seed 000, "bypass servers, upload directly to storage"): `presign_put` signs a
PUT of ``staging/<media_id>`` with ``x-amz-checksum-sha256`` among the signed headers, so the
client must send the declared SHA-256 and the store refuses (``BadDigest``) other bytes.
`promote` then copies the staged object to ``blobs/<sha256>`` asking the store to compute the
copy's SHA-256, which is checked again: a store that does not verify upload checksums (some
emulators) still never gets a wrong blob committed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ..s3 import S3Location, S3Settings
from .blobstore import DEFAULT_CHUNK_SIZE, BlobInfo, _check_name

MISSING = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchUpload"})


def b64_sha256(sha256_hex: str) -> str:
    """The base64 form S3 uses for ``x-amz-checksum-sha256``."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING


class StagedMismatch(Exception):
    """The staged object's bytes do not hash to the declared SHA-256 (nothing committed)."""

    def __init__(self, actual: str | None) -> None:
        super().__init__(f"the store computed sha256 {actual}")
        self.actual = actual


@dataclass(frozen=True, slots=True)
class StagedObject:
    """A direct upload's staging object, as the store describes it."""

    size: int
    modified: float


class S3BlobStore:
    """`BlobStore` over one bucket and prefix; also the direct-upload staging area."""

    def __init__(self, location: S3Location, settings: S3Settings) -> None:
        self.location = location
        self.settings = settings
        self.client = settings.client()
        # Presigning is local computation: a second client only changes the URL's host.
        self.presigner = settings.client(public=True) if settings.public_endpoint else self.client

    def __repr__(self) -> str:
        return f"S3BlobStore({self.location})"

    def blob_key(self, sha256: str) -> str:
        """The object key of a committed blob."""
        return self.location.key("blobs/" + _check_name(sha256))

    def staging_key(self, media_id: str) -> str:
        """The object key of a direct upload's staged bytes."""
        if "/" in media_id or not media_id:
            raise ValueError(f"bad media id {media_id!r}")
        return self.location.key("staging/" + media_id)

    async def _call(self, method: str, **kwargs: Any) -> Any:
        return await asyncio.to_thread(getattr(self.client, method),
                                       Bucket=self.location.bucket, **kwargs)  # fmt: skip

    async def _head(self, key: str) -> dict[str, Any] | None:
        try:
            head: dict[str, Any] = await self._call("head_object", Key=key)
        except ClientError as exc:
            if not _missing(exc):
                raise
            if exc.response.get("Error", {}).get("Code") == "404" \
                    and not await self._bucket_there():
                # A HEAD's 404 has no body to name its error: a bucket gone (deleted,
                # misnamed) answered so too, and a committed blob was said missing (404,
                # remembered by edges) and a whole upload not begun (found from outside).
                raise
            return None
        return head

    async def _bucket_there(self) -> bool:
        try:
            await self._call("head_bucket")
        except ClientError:
            return False
        return True

    # --- BlobStore ---------------------------------------------------------------------------

    async def stat(self, sha256: str) -> BlobInfo | None:
        """The blob's size and time, or None if it is not stored."""
        head = await self._head(self.blob_key(sha256))
        if head is None:
            return None
        return BlobInfo(sha256, int(head["ContentLength"]), head["LastModified"].timestamp())

    async def exists(self, sha256: str) -> bool:
        """Whether the blob is stored."""
        return await self.stat(sha256) is not None

    async def open(
        self, sha256: str, start: int = 0, length: int | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        """Stream ``length`` bytes of the blob from ``start`` (to the end if None)."""
        if length == 0:
            return
        end = "" if length is None else str(start + length - 1)
        answer = await self._call("get_object", Key=self.blob_key(sha256),
                                  Range=f"bytes={start}-{end}")  # fmt: skip
        body = answer["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        finally:
            body.close()

    async def commit(self, sha256: str, source: Path) -> bool:
        """Upload the verified local file ``source`` (consumed) unless the blob is stored."""
        try:
            if await self.exists(sha256):  # store-once: HEAD before any byte is sent
                return False

            def put() -> None:
                with source.open("rb") as f:
                    # The store checks the bytes against the hash we verified.
                    self.client.put_object(Bucket=self.location.bucket, Key=self.blob_key(sha256),
                                           Body=f, ChecksumSHA256=b64_sha256(sha256))  # fmt: skip

            await asyncio.to_thread(put)
            return True
        finally:
            source.unlink(missing_ok=True)

    async def delete(self, sha256: str) -> bool:
        """Remove the blob; False if it was not stored."""
        key = self.blob_key(sha256)
        if await self._head(key) is None:
            return False
        await self._call("delete_object", Key=key)
        return True

    async def keys(self, folder: str, start: str = "") -> list[tuple[str, int, float]]:
        """``(name, size, modified)`` of every object under ``<prefix><folder>/<start>``."""

        def walk() -> Iterator[tuple[str, int, float]]:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.location.bucket, Prefix=self.location.key(f"{folder}/{start}"))
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    yield name, int(obj["Size"]), obj["LastModified"].timestamp()

        return await asyncio.to_thread(lambda: list(walk()))

    async def alias_thumbnail(self, media_sha256: str, thumb_sha256: str) -> None:
        """Copy the thumbnail blob to ``thumbs/<media sha256>`` unless one is there (the
        first thumbnail wins, as in the database), for shields that read the bucket."""
        key = self.location.key("thumbs/" + _check_name(media_sha256))
        if await self._head(key) is None:
            await self._call("copy_object", Key=key, CopySource={
                "Bucket": self.location.bucket, "Key": self.blob_key(thumb_sha256)})

    # --- direct upload -----------------------------------------------------------------------

    def presign_put(self, media_id: str, sha256: str, ttl: int) -> tuple[str, dict[str, str]]:
        """A presigned PUT of the staging object, valid ``ttl`` seconds, bound to ``sha256``;
        the URL and the headers the client must send with it."""
        checksum = b64_sha256(sha256)
        url: str = self.presigner.generate_presigned_url(
            "put_object", ExpiresIn=ttl, HttpMethod="PUT",
            Params={"Bucket": self.location.bucket, "Key": self.staging_key(media_id),
                    "ChecksumSHA256": checksum},
        )  # fmt: skip
        return url, {"x-amz-checksum-sha256": checksum}

    async def staged(self, media_id: str) -> StagedObject | None:
        """The staging object of ``media_id`` (HEAD), or None if nothing arrived."""
        head = await self._head(self.staging_key(media_id))
        if head is None:
            return None
        return StagedObject(int(head["ContentLength"]), head["LastModified"].timestamp())

    async def staged_head(self, media_id: str, n: int) -> bytes:
        """The first ``n`` bytes of the staging object (a ranged GET)."""
        answer = await self._call("get_object", Key=self.staging_key(media_id),
                                  Range=f"bytes=0-{n - 1}")  # fmt: skip
        body = answer["Body"]
        try:
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data

    async def promote(self, media_id: str, sha256: str) -> bool:
        """Copy the staged object to ``blobs/<sha256>``; False if the blob was already stored
        (store-once: it is not overwritten). `StagedMismatch` if the store's SHA-256 of the
        staged bytes differs (the copy and the staged object are removed before anyone is told
        of it). Otherwise the staged object is left for the caller to `discard` once the
        commit is recorded, so a crash in between leaves bytes a retried confirm checks again.

        The staged bytes are hashed even when the blob is already stored (copied to a scratch
        key): else anyone who knew a stored blob's hash could confirm it as theirs without
        having its bytes, and a profile photo or thumbnail, never checked as media, became
        media served under /v/t1/."""
        staging, key = self.staging_key(media_id), self.blob_key(sha256)
        fresh = not await self.exists(sha256)
        target = key if fresh else self.staging_key(media_id + ".verify")
        answer = await self._call(
            "copy_object", Key=target, ChecksumAlgorithm="SHA256",
            CopySource={"Bucket": self.location.bucket, "Key": staging},
        )  # fmt: skip
        actual = answer.get("CopyObjectResult", {}).get("ChecksumSHA256")
        if actual != b64_sha256(sha256) or not fresh:
            await self._call("delete_object", Key=target)
        if actual != b64_sha256(sha256):
            await self.discard(media_id)
            raise StagedMismatch(base64.b64decode(actual).hex() if actual else None)
        return fresh

    async def discard(self, media_id: str) -> None:
        """Delete the staging object of ``media_id`` if there is one."""
        with contextlib.suppress(ClientError):
            await self._call("delete_object", Key=self.staging_key(media_id))

    async def sweep_staging(self, live_names: Callable[[], Awaitable[set[str]]],
                            cutoff: float) -> int:
        """Delete staging objects no live upload owns, last written before ``cutoff``, and
        abort multipart uploads started before it; how many were removed.

        What is there is listed first and ``live_names`` asked after: an upload's record
        exists before its first byte is staged, so nothing listed belongs to an upload the
        names miss. (Asked first, an upload requested in between lost its multipart upload
        wherever a store's start times do not protect it: moto reports 2010 for all.)"""

        def multiparts() -> list[tuple[str, str, float]]:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.location.bucket, Prefix=self.location.key("staging/"))
            return [(upload["Key"], upload["UploadId"], upload["Initiated"].timestamp())
                    for page in pages for upload in page.get("Uploads", ())]

        objects = await self.keys("staging")
        uploads = await asyncio.to_thread(multiparts)
        live = await live_names()
        removed = 0
        for name, _size, modified in objects:
            # Tail objects of resumable uploads (<media_id>.tail-<n>) belong to their upload.
            if name.split(".tail-")[0] not in live and modified < cutoff:
                await self.discard(name)
                removed += 1

        def abort_old() -> int:
            count = 0
            for key, upload_id, initiated in uploads:
                if key.rsplit("/", 1)[-1] not in live and initiated < cutoff:
                    with contextlib.suppress(ClientError):
                        self.client.abort_multipart_upload(
                            Bucket=self.location.bucket, Key=key, UploadId=upload_id)
                        count += 1
            return count

        return removed + await asyncio.to_thread(abort_old)
