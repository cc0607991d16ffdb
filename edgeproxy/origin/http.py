"""The origin's HTTP plumbing: reading request bodies and delivering stored blobs.

`serve_blob` answers GET/HEAD for a blob in a `BlobStore` with validators (ETag, Last-Modified,
Repr-Digest), conditional requests (If-Match, If-Unmodified-Since, If-None-Match,
If-Modified-Since, If-Range) and single byte ranges, streaming the bytes in chunks. Every
GET's content carries its RFC 9530 ``Content-Digest``, so a cache filling slices by Range can
check each one. The rest turns
request bodies and fields into values, or into `HTTPError`s that name the offending field.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from ..errors import AnswerCut, HTTPError
from ..http import (
    RangeNotSatisfiable,
    combine_fields,
    digest_field,
    format_http_date,
    not_modified,
    parse_range,
    precondition_failed,
    resolve_ranges,
)
from ..quietlog import QuietLog
from .blobstore import SHA256_HEX, BlobStore

# A store whose reads keep failing fails every transfer: the log says so once a minute.
_cut_log = QuietLog(logging.getLogger("edgeproxy.origin"))


class Body:
    """A request body as chunks, where a client disconnect ends the stream instead of raising,
    so the bytes that did arrive are kept (an interrupted upload can resume from them)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.disconnected = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async with aclosing(self.request.stream()) as body:
                async for chunk in body:
                    yield chunk
        except ClientDisconnect:
            self.disconnected = True


# Larger values are saturated here: every size, offset and time this origin compares them with is
# far smaller, so the comparison still says "too large" or "does not match", and int() never
# sees the thousands of digits it refuses with ValueError (a 500 before).
MAX_INT_FIELD = 2**63 - 1


def int_or_none(value: str | None) -> int | None:
    """A non-negative decimal integer from a header or query value (saturated at
    `MAX_INT_FIELD`), else None."""
    if value is None or not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0")
    if len(digits) > len(str(MAX_INT_FIELD)):
        return MAX_INT_FIELD
    return min(int(digits or "0"), MAX_INT_FIELD)


def sha256_field(value: str, name: str) -> str:
    """A lowercase hex SHA-256 from ``<hex>`` or ``sha256:<hex>``; 422 otherwise."""
    hexpart = value[7:] if value.lower().startswith("sha256:") else value
    if not SHA256_HEX.fullmatch(hexpart.lower()):
        raise HTTPError(422, "invalid_field", f"{name} must be a hex SHA-256", field=name)
    return hexpart.lower()


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """``body[name]`` checked to be a ``kind``; 400 naming the field if missing or mistyped."""
    value = body.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise HTTPError(400, "bad_request", f"missing field {name!r}", field=name)
    # bool is an int subclass, but `"file_size": true` is a malformed request, not size 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise HTTPError(400, "bad_request", f"field {name!r} must be {kind.__name__}", field=name)
    return value


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object body, read with a size cap (413 beyond ``limit``)."""
    declared = int_or_none(request.headers.get("content-length"))
    if declared is not None and declared > limit:
        raise HTTPError(413, "too_large", f"request body exceeds {limit} bytes", max_size=limit)
    raw = bytearray()
    async with aclosing(request.stream()) as body:
        async for chunk in body:
            raw += chunk
            if len(raw) > limit:
                raise HTTPError(413, "too_large", f"request body exceeds {limit} bytes",
                                max_size=limit)  # fmt: skip
    try:
        data = json.loads(raw)
    except RecursionError:
        # Nesting deeper than the interpreter's recursion limit fits in a small body; it is
        # the client's malformed input, not a bug of ours (a 500 before).
        raise HTTPError(400, "bad_json", "request body nests too deeply") from None
    except (ValueError, UnicodeDecodeError):
        raise HTTPError(400, "bad_json", "request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "bad_json", "request body must be a JSON object")
    return data


def sha256_digest(digest: bytes) -> str:
    """An RFC 9530 ``sha-256`` Digest field value (``Repr-Digest``, ``Content-Digest``)."""
    return digest_field(digest.hex())


async def content_digest(store: BlobStore, sha: str, start: int, length: int) -> str:
    """The ``Content-Digest`` of ``length`` bytes of blob ``sha`` from ``start``.

    The blob is immutable (content-addressed), so the bytes hashed here are the bytes then sent;
    reading a range twice costs a cache-warm read, once per slice an upstream cache fills.
    """
    hasher = hashlib.sha256()
    async for chunk in store.open(sha, start, length):  # read to the end: the file closes
        await asyncio.to_thread(hasher.update, chunk)  # hashlib releases the GIL
    return sha256_digest(hasher.digest())


async def serve_blob(
    request: Request, store: BlobStore, sha: str, content_type: str, cache_control: str,
    modified: float | None = None,
) -> Response:  # fmt: skip
    """Serve stored blob ``sha``: validators, conditional requests, one range, streaming.

    ``modified`` overrides the store's time for Last-Modified (a profile photo changes when
    its user points at another blob, not when the blob was stored).
    """
    info = await store.stat(sha)
    if info is None:
        raise HTTPError(404, "not_found", "the blob is missing from the store")
    modified = info.modified if modified is None else modified
    etag = f'"{sha}"'
    headers = {
        "ETag": etag,
        "Last-Modified": format_http_date(modified),
        "Cache-Control": cache_control,
        "Accept-Ranges": "bytes",
        "Repr-Digest": sha256_digest(bytes.fromhex(sha)),
        "X-Content-Type-Options": "nosniff",
    }
    # RFC 9110 §13.2.2's order: If-Match / If-Unmodified-Since (412) before If-None-Match /
    # If-Modified-Since (304); several lines of one field are one list (§5.3).
    fields = combine_fields(request.headers.items())
    if precondition_failed(fields, etag, headers["Last-Modified"]):
        raise HTTPError(412, "precondition_failed", "If-Match or If-Unmodified-Since does not "
                        "hold for this blob", headers={"ETag": etag})  # fmt: skip
    if not_modified(fields, etag, format_http_date(int(modified))):
        return Response(status_code=304, headers=headers)
    headers["Content-Type"] = content_type
    start, length, status = 0, info.size, 200
    # several Range lines are one value (RFC 9110 §5.3): two `bytes=` lines are invalid; and
    # Range is defined for GET only (§14.2): a HEAD's is ignored
    specs = parse_range(", ".join(request.headers.getlist("range")) or None) \
        if request.method == "GET" else None
    if_range = request.headers.get("if-range")
    # If-Range: only honour Range for the representation the client already has.
    if specs and (if_range is None or if_range.strip() in (etag, headers["Last-Modified"])):
        try:
            ranges = resolve_ranges(specs, info.size)
        except RangeNotSatisfiable as exc:
            headers = {"Content-Range": exc.content_range, "Accept-Ranges": "bytes"}
            raise HTTPError(416, "range_not_satisfiable", str(exc), headers=headers) from None
        if len(ranges) == 1:  # several disjoint ranges: the whole body (RFC 9110 §14.2)
            start, length, status = ranges[0].start, ranges[0].length, 206
            headers["Content-Range"] = ranges[0].content_range(info.size)
    headers["Content-Length"] = str(length)
    if status == 200:  # the content is the representation (no content coding)
        headers["Content-Digest"] = headers["Repr-Digest"]
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    if status == 206:
        headers["Content-Digest"] = await content_digest(store, sha, start, length)
    return StreamingResponse(_cut_quietly(store.open(sha, start, length), sha),
                             status_code=status, headers=headers)


async def _cut_quietly(chunks: AsyncIterator[bytes], sha: str) -> AsyncIterator[bytes]:
    """``chunks`` of blob ``sha`` as an answer's body. A read that fails midway (the object
    store's connection cut, a disk's I/O error) is past the status line: one warning line and
    an aborted connection (`AnswerCut`), not a traceback per cut transfer in the log."""
    sent = 0
    try:
        async for chunk in chunks:
            sent += len(chunk)
            yield chunk
    except Exception as exc:
        _cut_log.log(logging.WARNING, "blob_read_cut", "reading blob %s from the store broke "
                     "off after %d bytes (%s: %s): the answer was cut short", sha, sent,
                     type(exc).__name__, exc)
        raise AnswerCut(f"blob {sha} broke off after {sent} bytes") from exc
