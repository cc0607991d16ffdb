"""``deliver``: write an object to the client, whole or by ranges, from its sources.

Bodies are assembled slice by slice from what the coalescer joins (stored, filling here or in
another worker) or from an unstored upstream body handed to this request. Delivery reads
only: it never decides where bytes come from, and nothing holds a whole body in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import FillAborted, FillLost, HTTPError
from ..http import (
    ByteRange,
    RangeNotSatisfiable,
    RangeSpec,
    not_modified,
    precondition_failed,
    resolve_ranges,
)
from . import fields, policy
from .lanebodies import PIECES_MAX
from .meta import ObjectMeta, whole_body_digest
from .slicefiles import FilePiece
from .sources import DirectSource, Following, Source, StoredSource, Witness
from .types import ZEROCOPY, Message, Send

if TYPE_CHECKING:
    from .flight import Flight
    from .node import CacheNode

log = logging.getLogger("edgeproxy.cache")

# How often a slice whose fill in another worker ended before its first byte (`FillLost`) is
# joined again: stored meanwhile, or fetched anew by this worker.
REJOINS = 2

Join = Callable[[int], Awaitable[Source]]
Pieces = Callable[[int, int], FilePiece | None]  # an object's bytes first..last from its files


@dataclass(frozen=True, slots=True)
class Reply:
    """The status line and fields of one answer, and the byte ranges its body carries."""

    status: int
    headers: list[tuple[str, str]]
    ranges: list[ByteRange] | None  # None: the whole body (its length may be unknown)
    multipart: Multipart | None = None


def plan_reply(meta: ObjectMeta, req_headers: dict[str, str], method: str,
               headers: list[tuple[str, str]], specs: list[RangeSpec] | None) -> Reply:
    """Choose 200, 206 (one range or multipart), 304, 412 or 416 for a stored object (pure).

    The preconditions the fill does not forward are the cache's to evaluate, in RFC 9110
    §13.2.2's order; they apply to a 2xx only (§13.2.1)."""
    if meta.status == 200 and precondition_failed(req_headers, meta.etag, meta.last_modified):
        raise HTTPError(412, "precondition_failed", "If-Match or If-Unmodified-Since does not "
                        "hold for the stored representation")
    if meta.status == 200 and method in ("GET", "HEAD") and \
            not_modified(req_headers, meta.etag, meta.last_modified, meta.header("date")):
        return Reply(304, fields.not_modified_headers(headers), [])
    length = meta.length
    if length is not None and meta.status != 204:  # RFC 9110 §8.6: none on a 204
        headers = [*headers, ("content-length", str(length))]
    if meta.status != 200 or not specs or length is None:
        return Reply(meta.status, headers, None)
    if meta.if_range_fails(req_headers.get("if-range")):
        return Reply(200, headers, None)  # RFC 9110 §13.1.5: changed, so send it whole
    try:
        ranges = resolve_ranges(specs, length)
    except RangeNotSatisfiable as exc:
        raise HTTPError(416, "range_not_satisfiable",
                        f"no satisfiable range for {length} bytes",
                        headers={"content-range": exc.content_range}) from None
    if not ranges:
        return Reply(200, headers, None)  # a suffix of an empty representation: all of it
    headers = [(n, v) for n, v in headers if n not in ("content-length", "content-range")]
    if len(ranges) == 1:
        return Reply(206, [*headers, ("content-range", ranges[0].content_range(length)),
                           ("content-length", str(ranges[0].length))], ranges)
    multipart = Multipart(ranges, length, meta.content_type or "application/octet-stream")
    headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
    return Reply(206, [*headers, ("content-type", multipart.media_type),
                       ("content-length", str(multipart.content_length))], ranges, multipart)


def with_content_digest(reply: Reply, meta: ObjectMeta, key: str, method: str,
                        flight: Flight | None) -> Reply:
    """``reply`` with the ``Content-Digest`` its content may carry (`fields.content_digest`),
    given the flight this request led or followed (its answer's digest, if of ``meta``)."""
    upstream = flight.content_digest if flight is not None and flight.meta is not None \
        and flight.meta.version == meta.version else None
    content: tuple[int, int] | None = None
    if method != "HEAD" and reply.status in (200, 206) and reply.multipart is None \
            and meta.length is not None:
        if reply.ranges is None:
            content = (0, meta.length - 1)
        elif len(reply.ranges) == 1:
            content = (reply.ranges[0].start, reply.ranges[0].end)
    if content is None:
        return reply
    representation = policy.expected_sha256(
        key.partition("?")[0], {n.lower(): v for n, v in meta.headers}) \
        if meta.status == 200 and content[0] == 0 else None
    value = fields.content_digest(content, meta.length, representation, upstream)
    if value is None:
        return reply
    return dataclasses.replace(reply, headers=[*reply.headers, ("content-digest", value)])


async def send_body(reply: Reply, meta: ObjectMeta, send: Send, join: Join, *,
                    direct: DirectSource | None, read_size: int, timeout: float,
                    zerocopy: bool = False, pieces: Pieces | None = None) -> int:
    """Send the body of ``reply``; an error past the first byte aborts the connection, so
    the client sees a short body, never a complete-looking wrong one. ``zerocopy``: ``send``
    takes the server's zero-copy messages (stored slice files then go by ``sendfile``);
    ``pieces``: also runs of stored slices as one message (`FilePiece`), found and checked
    by ``pieces(first, last)`` (None when one is not stored whole: slice by slice then)."""

    async def out(source: Source, first: int, last: int) -> int:
        if zerocopy and isinstance(source, StoredSource):
            return await source.send_file(first, last, send, read_size, timeout)
        if zerocopy and isinstance(source, Following):  # (a fill holds its own last byte)
            return await source.stream(first, last, send, read_size, timeout, zerocopy=True)
        return await source.stream(first, last, send, read_size, timeout)

    sent = 0
    ranges = reply.ranges
    if direct is not None and ranges is not None and len(ranges) > 1:
        # An unstored body is read once, front to back (`DirectSource`), and the parts were
        # resolved in the order asked: a part before one already sent would go out empty
        # and the answer end short of its Content-Length. Its parts go in increasing order
        # instead (RFC 9110 §14.6 only SHOULD keep the asked order); each part carries its
        # own Content-Range and the framing's length does not depend on the order.
        ranges = sorted(ranges, key=lambda rng: rng.start)
    if ranges is None:
        if meta.length == 0:
            return 0
        ranges = [ByteRange(0, meta.length - 1)] if meta.length is not None else None
    if ranges is None:  # length unknown: the body is still arriving, slice after slice
        if direct is not None:
            return await direct.stream(0, None, send, read_size, timeout)
        index, attempt = 0, 0
        while True:
            source = await join(index)
            try:
                n = await source.stream(0, None, send, read_size, timeout)
            except FillLost as lost:  # (as below)
                attempt += 1
                if attempt > REJOINS:
                    raise
                log.info("slice %d: %s; joined again", index, lost)
                continue
            finally:
                source.close()
            attempt = 0
            sent += n
            if n < meta.slice_size:
                return sent
            index += 1
    # Fills whose bytes were sent before their answer's digest was checked: the body's last
    # byte (a multipart body's closing delimiter) waits until they all settle, so an answer
    # with a bad byte is cut short, never complete (DESIGN "Integrity").
    unsettled: list[Source] = []
    for i, rng in enumerate(ranges):
        if reply.multipart is not None:
            await send({"type": "http.response.body",
                        "body": reply.multipart.part_head(rng, i == 0), "more_body": True})
        if direct is not None:
            sent += await direct.stream(rng.start, rng.end, send, read_size, timeout)
            continue
        assert meta.length is not None
        span = policy.slice_span(rng.start, rng.end, meta.slice_size)
        covered = -1  # the last slice sent in a run of stored ones
        for index in span:
            if index <= covered:
                continue
            lo, hi = policy.slice_bounds(index, meta.slice_size, meta.length)
            first, last = max(rng.start, lo) - lo, min(rng.end, hi) - lo
            if pieces is not None and reply.multipart is None and not unsettled:
                top = min(span[-1], index + PIECES_MAX - 1)
                end = min(rng.end, policy.slice_bounds(top, meta.slice_size, meta.length)[1])
                run = pieces(lo + first, end)
                if run is not None:
                    count = len(run)
                    await send({"type": ZEROCOPY, "piece": run, "count": count,
                                "more_body": True})
                    sent += count
                    covered = top
                    continue
                pieces = None  # (one is missing or changed: slice by slice from here)
            final = reply.multipart is None and i == len(ranges) - 1 and index == span[-1]
            for attempt in range(REJOINS + 1):
                source = await join(index)
                try:
                    if final and (unsettled or source.pending):
                        if last > first:
                            sent += await out(source, first, last - 1)
                        first = last  # (out: a slice joined again sends the rest)
                        for earlier in (*unsettled, source):
                            await earlier.settled(timeout)
                    sent += await out(source, first, last)
                    if source.pending:
                        unsettled.append(source)
                    break
                except FillLost as lost:
                    if attempt == REJOINS:
                        raise
                    log.info("slice %d: %s; joined again", index, lost)
                finally:
                    source.close()
    if reply.multipart is not None:
        for earlier in unsettled:
            await earlier.settled(timeout)
        await send({"type": "http.response.body", "body": reply.multipart.closing,
                    "more_body": True})
    return sent


def _last_byte_held(send: Send, length: int, see: Callable[[bytes], None] | None,
                    release: Callable[[], None]) -> Send:
    """A `send` that shows every body byte to ``see`` and holds a ``length``-byte body's last
    byte until ``release()`` returns (it raises `FillAborted` to cut the answer short).

    Without ``see`` it also passes zero-copy messages on (`ZEROCOPY`: bytes no one needs to
    look at stay in the kernel), holding back the last byte of the one that ends the body."""
    sent = 0

    async def held(message: Message) -> None:
        nonlocal sent
        kind = message.get("type")
        if kind == ZEROCOPY and see is None:
            await _held_file(message)
            return
        body = message.get("body", b"")
        if kind != "http.response.body" or not body:
            await send(message)
            return
        if see is not None:
            see(body)
        sent += len(body)
        if sent < length:
            await send(message)
            return
        await send({**message, "body": body[:-1]})
        release()
        await send({**message, "body": body[-1:]})

    async def _held_file(message: Message) -> None:
        nonlocal sent
        count: int = message["count"]
        sent += count
        if sent < length or count <= 0:
            await send(message)
            return
        if count > 1:
            await send({**message, "count": count - 1})
        release()
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        last = os.pread(fd, 1, message["offset"] + count - 1)
        if len(last) != 1:
            raise FillAborted("the file ended before the body's last byte")
        await send({"type": "http.response.body", "body": last,
                    "more_body": message.get("more_body", False)})

    return held


def verifying_send(send: Send, digest: str, length: int, on_mismatch: Callable[[], None],
                   on_match: Callable[[], None] = lambda: None) -> Send:
    """A `send` that hashes a whole body and holds its last byte back until the SHA-256
    matches ``digest`` (DESIGN "Integrity": a body assembled from slices, some of which may
    have come by Range, is never completed with a wrong byte). On a mismatch the stored
    object is dropped and the answer aborted."""
    hasher = hashlib.sha256()

    def release() -> None:
        if not hmac.compare_digest(hasher.hexdigest(), digest):
            on_mismatch()
            raise FillAborted("the assembled body does not match its SHA-256")
        on_match()

    return _last_byte_held(send, length, hasher.update, release)


def vouched_send(send: Send, length: int, vouched: Callable[[], bool]) -> Send:
    """A `send` for a body whose slices a flight is filling from one whole body it hashes
    (`ObjectMeta.vouching`): nothing is hashed here, and the last byte goes out only once
    ``vouched()`` says that hash matched for the bytes sent (their sources' proofs,
    `sources.Witness`, or the object's stored facts); the answer is aborted if not. Slices
    are stored only after that flight's hash matched, and the last byte waits for every slice
    sent to be stored (`send_body`): a body of such slices is the hashed one."""
    def release() -> None:
        if not vouched():
            raise FillAborted("the object's slices were not vouched for by a whole-body hash")

    return _last_byte_held(send, length, None, release)


# --- multipart/byteranges (RFC 9110 §14.6) ---------------------------------------------------


@dataclass(frozen=True)
class Multipart:
    """The framing of a multipart/byteranges body for a set of ranges."""

    ranges: list[ByteRange]
    total: int
    content_type: str
    boundary: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def media_type(self) -> str:
        """The response's ``Content-Type``."""
        return f"multipart/byteranges; boundary={self.boundary}"

    def part_head(self, rng: ByteRange, first: bool) -> bytes:
        """The delimiter and headers in front of one part."""
        lead = b"" if first else b"\r\n"
        return lead + (
            f"--{self.boundary}\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Range: {rng.content_range(self.total)}\r\n\r\n"
        ).encode()

    @property
    def closing(self) -> bytes:
        """The final delimiter."""
        return f"\r\n--{self.boundary}--\r\n".encode()

    @property
    def content_length(self) -> int:
        """Exact body length, so the response needs no chunked encoding."""
        heads = sum(len(self.part_head(r, i == 0)) for i, r in enumerate(self.ranges))
        return heads + sum(r.length for r in self.ranges) + len(self.closing)


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def refuse_wrong_empty(digest: str | None) -> None:
    """An empty body has no last byte to hold while its SHA-256 is checked: one whose address
    (or Repr-Digest) names other bytes (``digest``) is refused before its head goes out, as
    `FillAborted` (the flight that brought it counts the failure; it is never stored)."""
    if digest is not None and digest != EMPTY_SHA256:
        raise FillAborted("integrity check failed: an empty body, whose address names the "
                          f"SHA-256 {digest[:16]}…")


def checked_send(node: CacheNode, key: str, meta: ObjectMeta, whole: bool,
                 flight: Flight | None, send: Send, witness: Witness) -> tuple[Send, bool]:
    """The ``send`` of an answer from ``meta``'s slices, and whether it hashes every byte:
    a whole body with a SHA-256 to match (content address, Repr-Digest) is hashed as it
    goes, unless its flight hashes it, or vouches for it (its last byte is then held, until
    ``witness``, told of every source the answer reads, or the stored facts prove it)."""
    digest = whole_body_digest(key, meta) if whole else None
    if flight is not None and flight.hasher is not None and flight.version == meta.version \
            and meta.length is not None and flight.first == 0 \
            and len(flight.fills) == policy.slice_count(meta.length, meta.slice_size):
        digest = None  # this flight fills every slice, hashes them all, holds the last byte
    if digest is not None and meta.length and meta.vouching:
        if node.coalescer.filling(key, meta.version):
            # (zero-copy stays: nothing looks at the bytes, only the last one is held) The
            # proof is the sources' own (`Witness`), else the stored facts: eviction may take
            # those, and the object's slices with them, while this answer reads its own.
            proof, witness.needed = digest, True
            return vouched_send(send, meta.length, lambda: witness.proves(proof)
                                or node.vouched(key, meta)), False
        if node.vouched(key, meta):
            digest = None  # its flight has matched the hash since these facts were read
    if digest is None or not meta.length:
        return send, False
    return verifying_send(send, digest, meta.length,
                          on_mismatch=lambda: node.integrity_failure(key, "assembled"),
                          on_match=lambda: node.mark_verified(key, meta)), True
