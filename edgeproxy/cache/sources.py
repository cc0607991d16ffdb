"""Where delivered bytes come from: a stored slice, a fill in flight (here or in another
worker), or an upstream body that is not stored. Delivery only ever reads from these."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from ..errors import FillAborted, FillLost, UpstreamTimeout
from .fills import SliceFill
from .foreign import ForeignFill, Proof, proven_file
from .store import SliceBody
from .transport import UpstreamResponse
from .types import ZEROCOPY, Send
from .waits import shared

# Pieces of a slice file (stored, or a fill's) from this size on go by zero-copy send when
# the server offers it; smaller ones are read, as a sendfile saves little on them.
ZEROCOPY_MIN = 16 * 1024


class Source(Protocol):
    """Bytes ``start..end`` (inclusive; ``end`` None: to the end) of one slice or body."""

    async def stream(self, start: int, end: int | None, send: Send, read_size: int,
                     timeout: float) -> int:
        """Send the bytes as body messages; returns how many were sent."""
        ...

    @property
    def pending(self) -> bool:
        """Whether the bytes read may yet turn out wrong (their fill's digest is unchecked)."""
        ...

    async def settled(self, timeout: float) -> None:
        """Return once the bytes read are vouched for (the fill they came from finished, its
        digest checked); raise `FillAborted` if they never will be."""
        ...

    def close(self) -> None:
        """Release descriptors."""
        ...


async def _send(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


class StoredSource:
    """A committed slice: bytes from the index, or an open file."""

    def __init__(self, body: SliceBody) -> None:
        self.body = body

    async def stream(self, start: int, end: int | None, send: Send, read_size: int,
                     timeout: float) -> int:
        body = self.body
        if isinstance(body, bytes):
            stop = len(body) if end is None else end + 1
            if stop > len(body):
                raise FillAborted("stored slice is shorter than its object says")
            await _send(send, body[start:stop])
            return stop - start
        fd = body.fileno()
        stop = os.fstat(fd).st_size if end is None else end + 1
        pos = start
        while pos < stop:
            # Hot slices come from the page cache; a thread hop per chunk costs more.
            data = os.pread(fd, min(stop - pos, read_size), pos)
            if not data:
                raise FillAborted("stored slice is shorter than its index says")
            if pos + len(data) >= stop and not body.unchanged():
                raise FillAborted("stored slice was written to while it was sent")
            await _send(send, data)
            pos += len(data)
        return stop - start

    async def send_file(self, start: int, end: int, send: Send, read_size: int,
                        timeout: float) -> int:
        """`stream` by the server's zero-copy send (bytes ``start..end`` of a slice file).
        The server checks the file as it sends (the message's ``unchanged``):
        one found changed aborts the answer before its next byte."""
        body = self.body
        if isinstance(body, bytes) or end - start + 1 < ZEROCOPY_MIN:
            return await self.stream(start, end, send, read_size, timeout)
        fd = body.fileno()
        if end >= os.fstat(fd).st_size:
            raise FillAborted("stored slice is shorter than its index says")
        await send({"type": ZEROCOPY, "file": fd, "offset": start, "count": end + 1 - start,
                    "more_body": True, "unchanged": body.unchanged})
        return end - start + 1

    pending = False  # committed bytes

    async def settled(self, timeout: float) -> None:
        """Committed bytes are settled."""

    def close(self) -> None:
        if not isinstance(self.body, bytes):
            self.body.close()


class Following:
    """Shared follow loop over a growing slice (a local or a foreign fill)."""

    fill: SliceFill | ForeignFill

    async def stream(self, start: int, end: int | None, send: Send, read_size: int,
                     timeout: float, *, zerocopy: bool = False) -> int:
        """`Source.stream`; ``zerocopy``: ``send`` takes the server's zero-copy messages
        (bytes the fill has in its file then go by ``sendfile``)."""
        fill, pos = self.fill, start
        while end is None or pos <= end:
            if fill.error is not None:
                if pos == start and isinstance(fill, ForeignFill):
                    raise FillLost(f"fill failed before its first byte: {fill.error}")
                raise FillAborted(f"fill failed: {fill.error}")
            limit = fill.visible if end is None else min(fill.visible, end + 1)
            if limit > pos:
                self._check()
                fd = fill.descriptor() if zerocopy and limit - pos >= ZEROCOPY_MIN else -1
                if fd >= 0:
                    # a duplicate: the fill may close its own while this send waits (a disk
                    # fault moves it to memory), and a number closed must not be reused here
                    fd = os.dup(fd)
                    try:
                        await send({"type": ZEROCOPY, "file": fd, "offset": pos,
                                    "count": limit - pos, "more_body": True})
                    finally:
                        os.close(fd)
                    pos = limit
                    continue
                data = fill.read(pos, min(limit - pos, read_size))
                if not data:
                    raise FillAborted("fill shorter than reported")
                await _send(send, data)
                pos += len(data)
            elif fill.done:
                if end is None:
                    break
                raise FillAborted("fill ended short of the slice")
            else:
                await fill.wait_beyond(pos, timeout)
        return pos - start

    def _check(self) -> None:
        """Before bytes go out: raise if they are not the ones this reader may send."""


class FillSource(Following):
    """A slice this process is filling; the reader is counted in at once (synchronously).

    ``version``: the representation the answer announced. A fill joined before its flight's
    answer was in may turn out to carry another one (the object changed, or an error came
    back): its bytes then abort the answer instead of being spliced into it.
    """

    def __init__(self, fill: SliceFill, version: str | None = None) -> None:
        self.fill: SliceFill = fill
        self.version = version
        fill.attach()
        self._closed = False

    @property
    def pending(self) -> bool:
        """A fill whose answer is being checked (a digest, or a sum its upstream named for
        the slice) is pending until finished, and so is one whose answer is not in yet (it
        may be checked); any other fill's bytes are as good as they will get once read."""
        fill = self.fill
        return not fill.done and (fill.flight.hasher is not None or fill.want is not None
                                  or not fill.flight.headers.done())

    async def settled(self, timeout: float) -> None:
        fill = self.fill
        if fill.flight.hasher is None and fill.want is None:
            return
        await fill.settled()
        if fill.error is not None:
            raise FillAborted(f"fill failed: {fill.error}")

    @property
    def small(self) -> bool:
        """Whether the whole slice is one its fill keeps in memory (of a known length)."""
        fill = self.fill
        return fill.buf is not None and fill.expected is not None \
            and fill.expected <= fill.inline_max

    async def ended(self) -> None:
        """Return once the fill has ended with every byte in (and checked, where its answer
        is checked); raise `FillAborted` if it failed. No timeout of its own, as `settled`."""
        await self.fill.settled()
        if self.fill.error is not None:
            raise FillAborted(f"fill failed: {self.fill.error}")

    def _check(self) -> None:
        if self.version is not None and self.fill.flight.version != self.version:
            raise FillAborted(f"slice {self.fill.index}: upstream answered with another "
                              "representation")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.fill.detach()


class ForeignSource(Following):
    """A slice another worker process is filling."""

    def __init__(self, fill: ForeignFill) -> None:
        self.fill: ForeignFill = fill
        fill.attach()
        self._closed = False

    @property
    def pending(self) -> bool:
        """Whether that worker checks a digest cannot be told from here: pending until it
        has committed the slice."""
        return not self.fill.done

    async def settled(self, timeout: float) -> None:
        fill = self.fill
        if not fill.done:
            await fill.wait_done(timeout)
        if fill.error is not None:
            if fill.visible == 0:
                # none of its bytes can have gone out (the final one-byte slice of an answer
                # is settled before it is sent): joined again, as `stream` has it
                raise FillLost(f"fill failed before its first byte: {fill.error}")
            raise FillAborted(f"fill failed: {fill.error}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.fill.detach()


class DirectSource:
    """An upstream body that is not stored, read once, for the one request that led it.

    Positions are in the representation; the body starts at ``body_start``. Ranges must come
    in increasing order, apart (`send_body` sorts the merged parts of a multipart answer).
    """

    def __init__(self, resp: UpstreamResponse, body_start: int) -> None:
        self.resp = resp
        self.pos = body_start
        self._chunks: AsyncIterator[bytes] = resp.aiter_body()
        self._pending = b""

    async def stream(self, start: int, end: int | None, send: Send, read_size: int,
                     timeout: float) -> int:
        sent = 0
        while end is None or self.pos <= end:
            chunk = self._pending
            self._pending = b""
            if not chunk:
                try:
                    chunk = await anext(self._chunks)
                except StopAsyncIteration:
                    if end is None:
                        break
                    raise FillAborted("upstream body ended early") from None
            lo = self.pos
            self.pos += len(chunk)
            if self.pos <= start:
                continue
            cut_lo = max(0, start - lo)
            cut_hi = len(chunk) if end is None else min(len(chunk), end + 1 - lo)
            if cut_hi < len(chunk):
                self._pending = chunk[cut_hi:]
                self.pos = lo + cut_hi
            await _send(send, chunk[cut_lo:cut_hi])
            sent += cut_hi - cut_lo
        return sent

    pending = False  # an unstored body is not checked here (its digest fields go along)

    async def settled(self, timeout: float) -> None:
        """Nothing to wait for."""

    def close(self) -> None:
        """The response is closed by `aclose`; nothing to do synchronously."""

    async def aclose(self) -> None:
        """Release the upstream connection."""
        await self.resp.aclose()


async def small_body_ended(ready: dict[int, Source], length: int | None,
                           timeout: float) -> None:
    """Wait for the fill of a small body (``length`` bytes) kept in memory to end, before
    its answer's head goes out; on a failure (of any fill in ``ready``: one that failed
    already is not worth a head either), close every source in ``ready`` and raise.

    Such a body then goes whole, in one write with the head: no last byte held back for its
    check (a second write, and one more wake-up of the request per miss), and a fill that
    fails is answered with an error status instead of a body cut short. Its first byte comes
    with its last: for at most the inline limit, a few milliseconds from a streaming origin.
    """
    try:
        for source in ready.values():
            if not isinstance(source, FillSource):
                continue
            fill = source.fill
            if length is not None and length <= fill.inline_max \
                    and not fill.flight.headers.done():  # (a slice fetched anew, If-Range)
                try:
                    await shared(fill.flight.headers, timeout)
                except TimeoutError:
                    raise UpstreamTimeout(f"no answer from upstream in {timeout:.0f}s") \
                        from None
            if fill.error is not None:  # failed already: no head to cut short
                raise FillAborted(f"fill failed: {fill.error}")
            if source.small and fill.expected == length:  # (not a small last slice)
                await source.ended()
    except BaseException:
        for source in ready.values():
            source.close()
        raise


Evidence = Callable[[], "Proof | bytes | None"]


class Witness:
    """What proves the bytes of one answer right, source by source, where no eviction can
    take it: the flight a fill of this worker belongs to (`Flight.proven`), the mark of a
    slice file (`foreign.proven_file`: another worker's fill, a stored slice, still read
    through the descriptor held once it is evicted), and for a slice stored inline (no file
    to mark), its SHA-256 against the `Proof.tail` another of those carries.

    A whole answer whose last byte `deliver.vouched_send` holds is proven when every source
    it read from is; else the proof is left to the stored facts, which eviction may take.
    """

    def __init__(self) -> None:
        self._seen: list[tuple[int, Evidence]] = []
        self.needed = False  # (set when an answer's last byte waits for the proof)

    def saw(self, index: int, source: Source) -> None:
        """Slice ``index`` of the answer comes from ``source``: note what proves it (a
        stored file's mark now, while its descriptor is open; a fill's once it is done)."""
        if not self.needed:
            return  # (a look at a file's marks per slice, on answers that need none)
        evidence: Evidence
        if isinstance(source, StoredSource):
            body = source.body
            found = body if isinstance(body, bytes) else proven_file(body.fileno())
            evidence = lambda: found  # noqa: E731
        elif isinstance(source, FillSource):
            fill = source.fill
            evidence = lambda: fill.flight.proven \
                if fill.error is None and not fill.discard else None  # noqa: E731
        elif isinstance(source, ForeignSource):
            foreign = source.fill
            evidence = lambda: foreign.evidence()  # noqa: E731
        else:
            evidence = lambda: None  # noqa: E731
        self._seen.append((index, evidence))

    def proves(self, digest: str) -> bool:
        """Whether every byte read so far came from a body whose SHA-256 is ``digest``."""
        seen = [(index, evidence()) for index, evidence in self._seen]
        proofs = [found for _, found in seen if isinstance(found, Proof)]
        if not seen or not all(hmac.compare_digest(p.digest, digest) for p in proofs):
            return False
        tails = {proof.tail for proof in proofs if proof.tail is not None}
        return all(isinstance(found, Proof) or (
            isinstance(found, bytes) and (index, hashlib.sha256(found).hexdigest()) in tails)
            for index, found in seen)
