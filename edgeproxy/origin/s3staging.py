"""Resumable uploads through the origin into the bucket: S3 multipart, streamed as tusd's s3store.

With the s3 store the seed's offset protocol and tus keep their URLs and semantics, but the
bytes never touch the origin's disk: each request's body is cut into parts of `PART_SIZE`
(S3's minimum) uploaded as they fill, and the remainder under a part is kept as a *tail
object* until the next request completes it. The last request completes the multipart upload
into ``staging/<media_id>``, which confirm then checks and copies like a direct upload.

Parts have a fixed size, so an offset names everything: parts ``1..offset // PART_SIZE`` are
whole and the tail ``staging/<media_id>.tail-<boundary>`` holds ``offset % PART_SIZE`` bytes.
A request that fails midway only leaves parts and tails *past* the recorded offset; the next
request at the recorded offset re-uploads (overwrites) those part numbers. Tails are named by
their boundary so a new one never overwrites one the recorded offset still needs; stale ones
are deleted after completion and by the staging sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from botocore.exceptions import ClientError

from .s3store import S3BlobStore, _missing
from .staging import ChecksumMismatch, Progress, StagingShort, TooLarge

PART_SIZE = 5 * 1024 * 1024  # S3's smallest part but the last
SPOOL_IN_MEMORY = 1024 * 1024


class S3StagingWriter:
    """Writes one upload's bytes as multipart parts (see `S3Staging.writer`)."""

    def __init__(self, staging: S3Staging, name: str) -> None:
        self.s = staging
        self.name = name
        self.key = staging.store.staging_key(name)

    async def restart(self) -> None:
        """Drop whatever was staged (parts, tails, a completed object): a whole-blob PUT
        starts the upload over, then appends at 0 like any other request."""
        await self.s.remove(self.name)

    async def append(self, chunks: AsyncIterable[bytes], offset: int, limit: int,
                     checksum: tuple[str, bytes] | None = None,
                     progress: Progress | None = None) -> tuple[int, str]:  # fmt: skip
        """Append ``chunks`` at ``offset``; ``limit`` is what the upload still expects, so the
        request that brings exactly that many bytes completes it. Same contract as
        `edgeproxy.origin.staging.StagingWriter.append`; ``progress`` is told the offset
        at each part stored (a resume may start there), not with a ``checksum``."""
        boundary = offset - offset % PART_SIZE
        buf = bytearray(await self._resume_point(offset, boundary))
        if checksum is not None:
            chunks = await _verified(chunks, limit, checksum)
        upload_id = await self.s.upload_id(self.key, create=True)
        assert upload_id is not None
        hasher, received, number = hashlib.sha256(), 0, boundary // PART_SIZE + 1
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"more than {limit} bytes")
            hasher.update(chunk)
            buf += chunk
            while len(buf) >= PART_SIZE:
                await self.s.call("upload_part", Key=self.key, UploadId=upload_id,
                                  PartNumber=number, Body=bytes(buf[:PART_SIZE]))  # fmt: skip
                number, boundary = number + 1, boundary + PART_SIZE
                del buf[:PART_SIZE]
                if progress is not None and checksum is None and boundary < offset + limit:
                    await progress(boundary)
        if received == limit:
            await self._complete(upload_id, number, bytes(buf))
        elif buf:
            await self.s.call("put_object", Key=self.s.tail_key(self.name, boundary),
                              Body=bytes(buf))  # fmt: skip
        return received, hasher.hexdigest()

    async def _resume_point(self, offset: int, boundary: int) -> bytes:
        """The tail bytes that precede ``offset``; `StagingShort` if the bucket lacks them."""
        if offset == 0:
            return b""
        if offset > boundary:
            tail = await self.s.read(self.s.tail_key(self.name, boundary))
            if tail is not None and len(tail) >= offset - boundary:
                return tail[: offset - boundary]
        elif len(await self.s.parts(self.key)) >= boundary // PART_SIZE:
            return b""
        raise StagingShort(await self.s.available(self.name))

    async def _complete(self, upload_id: str, number: int, last: bytes) -> None:
        if last or number == 1:
            await self.s.call("upload_part", Key=self.key, UploadId=upload_id,
                              PartNumber=number, Body=last)  # fmt: skip
        else:
            number -= 1
        parts = await self.s.parts(self.key, upload_id)
        await self.s.call("complete_multipart_upload", Key=self.key, UploadId=upload_id,
                          MultipartUpload={"Parts": [
                              {"PartNumber": n, "ETag": parts[n]} for n in range(1, number + 1)
                          ]})  # fmt: skip
        await self.s.drop_tails(self.name)


async def _verified(chunks: AsyncIterable[bytes], limit: int,
                    checksum: tuple[str, bytes]) -> AsyncIterable[bytes]:  # fmt: skip
    """The body spooled and checked against tus ``Upload-Checksum`` before any part is sent
    (a part once uploaded cannot be taken back)."""
    check, size = hashlib.new(checksum[0]), 0
    spool = tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY)  # noqa: SIM115 (closed by replay)
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"more than {limit} bytes")
            check.update(chunk)
            await asyncio.to_thread(spool.write, chunk)
        if check.digest() != checksum[1]:
            raise ChecksumMismatch(f"{checksum[0]} of the {size} bytes received differs")
    except BaseException:
        spool.close()
        raise
    spool.seek(0)

    async def replay() -> AsyncIterator[bytes]:
        with spool:
            while data := await asyncio.to_thread(spool.read, 256 * 1024):
                yield data

    return replay()


class S3Staging:
    """Upload staging in the bucket, with the interface of the local `Staging` that the
    upload URL's handlers use (``writer`` and ``remove``)."""

    def __init__(self, store: S3BlobStore,
                 lock: Callable[[str], AbstractAsyncContextManager[None]]) -> None:  # fmt: skip
        """``lock(name)`` holds an upload exclusively across every origin process sharing the
        database (`StagingBusy` if another has it), as the local flock does on one box."""
        self.store = store
        self._lock = lock

    async def call(self, method: str, **kwargs: Any) -> Any:
        """One S3 call on the store's bucket, in a worker thread."""
        return await self.store._call(method, **kwargs)

    def tail_key(self, name: str, boundary: int) -> str:
        """The tail object of ``name`` holding the bytes from ``boundary`` on."""
        return self.store.staging_key(name) + f".tail-{boundary}"

    @asynccontextmanager
    async def writer(self, name: str) -> AsyncIterator[S3StagingWriter]:
        """Exclusive write access to upload ``name`` (`StagingBusy` if another origin or
        worker is writing it)."""
        async with self._lock(name):
            yield S3StagingWriter(self, name)

    async def read(self, key: str) -> bytes | None:
        """A small object's bytes, or None if it does not exist."""
        try:
            answer = await self.call("get_object", Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        body = answer["Body"]
        try:
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data

    async def upload_id(self, key: str, *, create: bool) -> str | None:
        """The multipart upload in progress for ``key`` (started if ``create``)."""
        answer = await self.call("list_multipart_uploads", Prefix=key)
        for upload in answer.get("Uploads", ()):
            if upload["Key"] == key:
                return str(upload["UploadId"])
        if not create:
            return None
        started = await self.call("create_multipart_upload", Key=key)
        return str(started["UploadId"])

    async def parts(self, key: str, upload_id: str | None = None) -> dict[int, str]:
        """The contiguous uploaded parts 1..n of ``key``'s multipart upload → ETag."""
        upload_id = upload_id or await self.upload_id(key, create=False)
        if upload_id is None:
            return {}
        found: dict[int, str] = {}
        marker = 0
        while True:
            page = await self.call("list_parts", Key=key, UploadId=upload_id,
                                   PartNumberMarker=marker)  # fmt: skip
            found |= {int(p["PartNumber"]): str(p["ETag"]) for p in page.get("Parts", ())}
            if not page.get("IsTruncated"):
                break
            marker = int(page["NextPartNumberMarker"])
        n = 0
        while n + 1 in found:
            n += 1
        return {i: found[i] for i in range(1, n + 1)}

    async def available(self, name: str) -> int:
        """The furthest offset the bucket holds every byte up to (where to resume)."""
        key = self.store.staging_key(name)
        staged = await self.store.staged(name)
        if staged is not None:
            return staged.size
        whole = len(await self.parts(key)) * PART_SIZE
        best = whole
        prefix = name + ".tail-"
        for tail, size, _ in await self.store.keys("staging", prefix):
            boundary = int(tail[len(prefix):])
            if boundary <= whole:
                best = max(best, boundary + size)
        return best

    async def drop_tails(self, name: str) -> None:
        """Delete every tail object of ``name``."""
        for tail, _, _ in await self.store.keys("staging", name + ".tail-"):
            with contextlib.suppress(ClientError):
                await self.call("delete_object", Key=self.store.staging_key(tail))

    async def remove(self, name: str) -> None:
        """Abort the multipart upload and delete the tails and the completed object."""
        key = self.store.staging_key(name)
        upload_id = await self.upload_id(key, create=False)
        if upload_id is not None:
            with contextlib.suppress(ClientError):
                await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)
        await self.drop_tails(name)
        await self.store.discard(name)
