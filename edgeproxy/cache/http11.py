"""A lean HTTP/1.1 client for the upstream side: asyncio protocols, httptools' parser, a pool
(`edgeproxy.cache.pool`).

A cache miss is mostly the cost of its upstream exchange, and a general client (httpx over
httpcore, h11 and anyio) spends more on models, parsing and task plumbing than the cache
spends on everything else. This one does what a proxy needs and nothing more: keep-alive
connections, one request at a time per connection, bodies by Content-Length (read as they
come once the head is parsed), chunked or close-delimited (httptools decodes them),
back-pressure on slow readers, and the error kinds of `edgeproxy.errors`. uvicorn runs on the
same parser.
"""

from __future__ import annotations

import asyncio
import collections

import httptools

from ..errors import (
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..tls import NO_CLIENT_CERT_HINT
from .headrepair import HEAD_MAX, repaired
from .waits import within

RawHeaders = list[tuple[bytes, bytes]]

# Body bytes buffered per connection before reading from the socket pauses (back-pressure).
HIGH_WATER = 1024 * 1024
MAX_INTERIMS = 8  # interim answers kept to pass on (their bytes count in `HEAD_MAX`)


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; parses one response at a time (`pool.Pool`
    sends the requests)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self._new_parser()
        # the bytes of the answer until its head is parsed, kept (not copied) for a repair
        self.seen: list[bytes] | None = []
        self.head_bytes = 0  # the answer's bytes until its head is parsed
        self.held: list[bytes] | None = None  # a head held back until it can be repaired
        self.error_text = ""  # what the parser said of the head held back
        self.status = 0
        self.headers: RawHeaders = []
        self.headers_done = asyncio.get_running_loop().create_future()
        self.complete = False
        self.interim = False
        self.interims: list[tuple[int, RawHeaders]] = []  # 1xx answers before the final one
        self.keep_alive = False  # read from the parser while it still knows (at the end)
        self.head = False
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.paused = False
        self.error: BaseException | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.ended = False  # the final answer's message is complete (what follows is surplus)
        # body bytes still to come of an answer framed by Content-Length: read here, past
        # the parser (None: the parser frames the body)
        self.rest: int | None = None

    def _new_parser(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        # RFC 9112 §6.3: a response whose Transfer-Encoding does not end in chunked is read
        # until the connection closes (llhttp refuses it otherwise); §2.2: a line may end in
        # a bare LF (old CGI scripts; nginx takes them too)
        self.parser.set_dangerous_leniencies(lenient_transfer_encoding=True,
                                             lenient_optional_cr_before_lf=True)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.complete and self.headers_done.done():
            # Bytes past the end of the answer (a Content-Length shorter than what was sent):
            # the answer stands, the connection cannot carry another one.
            self.keep_alive = False
            return
        if self.held is not None:
            self.held.append(data)
            self._repair()
            return
        if self.rest is not None:
            self._take(data)
            return
        if self.seen is not None:
            self.seen.append(data)
            self.head_bytes += len(data)
        self._feed(data)
        if self.seen is not None and self.head_bytes > HEAD_MAX and self.error is None:
            # a head this large, or interim answers without end: refused, not buffered
            self._fail(UpstreamProtocolError(
                f"the upstream's answer head exceeds {HEAD_MAX // 1024} KiB"))

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("upstream switched protocols"))
        except httptools.HttpParserError as exc:
            if self.ended:
                self.keep_alive = False  # surplus bytes in the answer's last read: as above
                return
            if self.seen is not None and not self.headers_done.done():
                # a head a proxy may mend (`headrepair`: whitespace before a colon, repeated
                # equal lengths) is mended and the answer parsed again, once
                self.held, self.seen = self.seen, None
                self.error_text = str(exc)
                self._repair()
                return
            self._fail(UpstreamProtocolError(f"invalid HTTP from upstream: {exc}"))

    def _repair(self) -> None:
        assert self.held is not None
        raw = b"".join(self.held)
        fixed = repaired(raw)
        if fixed is None:  # the head is not all in: wait for the rest
            if len(raw) > HEAD_MAX:
                self.held = None
                self._fail(UpstreamProtocolError(
                    f"invalid HTTP from upstream: {self.error_text}"))
            return
        self.held = None
        if fixed == raw:  # nothing to repair: the answer is broken
            self._fail(UpstreamProtocolError(f"invalid HTTP from upstream: {self.error_text}"))
            return
        self._new_parser()
        self._feed(fixed)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.headers_done.done() and not self.complete and self.error is None:
            if self._close_delimited():
                self.complete = True  # RFC 9112 §6.3: the body ends with the connection
            else:
                self.error = UpstreamUnreachable("upstream closed the connection mid-body")
        elif not self.headers_done.done():
            why = "upstream closed the connection before answering"
            if self.transport is not None and self.transport.get_extra_info("ssl_object"):
                why += f" ({NO_CLIENT_CERT_HINT})"  # a TLS refusal looks just like this
            self._fail(UpstreamUnreachable(why))
        self._wake()

    # --- httptools callbacks ---

    def on_message_begin(self) -> None:
        if self.ended:
            self.keep_alive = False  # surplus bytes parsed as another message: the answer's
            return  # fields stand, the connection cannot carry another one
        self.headers = []
        self.interim = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.ended:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.ended:
            return
        status = self.parser.get_status_code()
        if status < 100 or status == 101:
            # llhttp reads any three digits; below 100 is no status (RFC 9110 §15), and a
            # 101 switches to a protocol no request of ours asks for (Upgrade is hop-by-hop,
            # never relayed: §7.8). Relayed, the one raised in the server (no status line),
            # the other told the client its connection now spoke something else.
            why = "switched protocols" if status == 101 else f"sent the status code {status:03d}"
            self._fail(UpstreamProtocolError(f"upstream {why}"))
            return
        if 100 <= status < 200:
            self.interim = True  # RFC 9110 §15.2: informational; the final answer follows
            if status != 100 and len(self.interims) < MAX_INTERIMS:
                self.interims.append((status, self.headers))  # (a 100 answers our request)
            return
        self.status = status
        self.keep_alive = bool(self.parser.should_keep_alive())
        self.seen = None  # the head is in: nothing left to repair
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.head or self.status in (204, 304):
            self.complete = True
            return
        self.rest = _declared_length(self.headers)

    def _take(self, data: bytes) -> None:
        """Body bytes of an answer framed by Content-Length, taken as they came: llhttp only
        counts such bytes, but httptools copies each read into a new object for `on_body`
        (a sixth of the event loop's time during a fill, traced)."""
        rest = self.rest
        assert rest is not None
        if len(data) > rest:
            data = data[:rest]
            self.keep_alive = False  # bytes past the end: the connection cannot carry more
        self.rest = rest - len(data)
        if data:
            self._body(data)
        if not self.rest:
            self._ended()

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        if self.rest is not None:
            self.rest -= len(body)  # (the parser's part of the body: the rest is `_take`n)
        self._body(body)

    def _body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.ended:
            return
        if self.interim:
            self.interim = False
            return
        self.keep_alive = self.keep_alive and bool(self.parser.should_keep_alive())
        self._ended()

    def _ended(self) -> None:
        self.rest = None
        self.ended = True
        self.complete = True
        self._wake()

    # --- the client's side ---

    def _close_delimited(self) -> bool:
        te = b",".join(v for n, v in self.headers if n == b"transfer-encoding")
        chunked = te.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        return not chunked and (bool(te) or all(n != b"content-length" for n, _ in self.headers))

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if not self.headers_done.done():
            self.headers_done.set_exception(exc)
            self.headers_done.exception()
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def next_chunk(self, timeout: float) -> bytes | None:
        """The next body bytes; None at the end of the body."""
        while not self.chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return None
            self.wakeup = asyncio.get_running_loop().create_future()
            try:
                await within(self.wakeup, timeout)
            except TimeoutError:
                raise UpstreamTimeout(f"no body bytes from upstream for {timeout:.0f}s") from None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        if self.paused and self.buffered < HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return chunk

    def reusable(self) -> bool:
        """Whether the connection can carry another request."""
        return (self.complete and not self.lost and self.error is None
                and self.transport is not None and not self.transport.is_closing()
                and self.keep_alive)


def _declared_length(headers: RawHeaders) -> int | None:
    """The body length a final answer's fields declare, if it is framed by Content-Length
    alone (no Transfer-Encoding; llhttp has refused or the repair has mended differing
    lengths)."""
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            length = value
    if length is None:
        return None
    length = length.strip()
    return int(length) if length.isdigit() else None
