"""uvicorn's HTTP/1.1 protocols with the request guard's head limits enforced while reading.

llhttp parses as bytes arrive but sets no bound of its own, so a stock server buffers a 1 MB
header field (or 10,000 of them) before the app can refuse it. The httptools protocol counts
the target and each header field from the parser callbacks and answers 414 or 431 (JSON, then
close) the moment a limit is crossed. httptools holds a field being received in its own buffer
until the field ends, so the bytes of an unfinished head are also counted per read, as a
backstop. Each head must also arrive within ``header_timeout`` (`edgeproxy.headtimeout`).

It also writes a response's head together with its first body bytes (`HeadHolder`): a small
answer then leaves in one send instead of two, which on loopback is most of what a socket
write costs a hit or a miss. And in front of a cache node it answers plain hits on hot objects
as soon as their head is parsed (`fast_reply`): no task, no ASGI messages, one write, the
access-log line and the metrics as on the app's path; a head received again byte for byte is
answered again without parsing (`edgeproxy.cache.replays`). Everything else goes through the
app.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import sys
import time
from functools import partial
from typing import Any

from httptools import HttpParserInvalidMethodError
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import admission_for, lead_key
from .cache.fastlane import plain_target
from .cache.replays import HEAD_MAX
from .cache.slicefiles import FilePiece
from .cache.types import FAST_DECLINED, INFORMATIONAL
from .config import HTTPLimitsConfig
from .cyclesend import ZeroCopySend
from .errors import HTTPError
from .fastanswer import LANE, Sending, fast_lane_of, write_answer
from .guard import FIELD_OVERHEAD, PROXIED_BYTES, PROXIED_FIELDS, head_cap, valid_host
from .headholder import HeadHolder
from .headtimeout import DeadlineHooks, HeadDeadline, send_refusal, timeout_error
from .pipelining import PipelinedRequests
from .zerocopy import ZEROCOPY, send_rest, socket_fd, unsent_bytes

# A request line of the form RFC 9112 §3 gives (a method token, a target, an HTTP version)
_REQUEST_LINE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [^ \r\n]+ HTTP/\d\.\d\r?\n")


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a head that broke a limit."""


# (uvicorn types `eof_received` as returning None; asyncio's protocol may return True)
class GuardedHttpToolsProtocol(DeadlineHooks, PipelinedRequests, HttpToolsProtocol):  # type: ignore[misc]
    """`HttpToolsProtocol` answering 431/414 as soon as a request head breaks ``limits``."""

    def __init__(self, *args: Any, limits: HTTPLimitsConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.cap = head_cap(limits)
        self.refusal: HTTPError | None = None
        lane = LANE
        if lane[0] is not self.app:  # (one app per worker: looked for once, not per connection)
            lane[:] = [self.app, fast_lane_of(self.app)]
        self.fast: tuple[Any, Any] | None = lane[1]
        self.fast_served = False
        self.unsent_seen = sys.maxsize  # answer bytes not yet taken, at the last idle check
        self.fast_declined = False  # the fast lane was asked for this request and said no
        self.begun = 0  # requests begun in the chunk being parsed
        self.lane_answered = 0  # ... and whether the lane answered one
        self.deadline = HeadDeadline(self.loop, limits.header_timeout, self._head_timed_out,
                                     self._idle_timed_out)
        # (lazy as the head's: a chunk of body moves a time, not a timer)
        self.body_deadline = HeadDeadline(self.loop, limits.body_timeout, self._body_timed_out)
        self.zerocopy = False  # whether bytes may bypass the transport (plain TCP)
        node = self.fast[0] if self.fast is not None else None
        self.admission = admission_for(self.loop, node.store.directory if node else None)
        self._reset_head()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """A new connection: whether its answers may use sendfile is known from here on."""
        super().connection_made(transport)
        self.zerocopy = socket_fd(transport) is not None

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        """Start the request's task when `edgeproxy.admission` gives it its turn (behind
        the request it follows, if any: `lead_key`)."""
        key = cycle.lead_key = lead_key(cycle.scope)  # (read again as its answer begins)
        self.answering = cycle
        self.admission.start(partial(self._begin_task, cycle, app, key), key, cycle)

    def _begin_task(self, cycle: Any, app: Any, key: Any) -> None:
        """uvicorn's task start; the task's end lets the requests behind it start, if its
        answer did not begin first."""
        if getattr(self.config, "reset_contextvars", False):  # (uvicorn's opt-in, kept)
            task = self.loop.create_task(cycle.run_asgi(app), context=contextvars.Context())
        else:
            task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        if key is not None:
            admission = self.admission
            task.add_done_callback(lambda _: admission.led(key, cycle))

    def _lead_began(self, cycle: Any) -> None:
        key = getattr(cycle, "lead_key", None)  # (None: its task never went through admission)
        if key is not None:
            self.admission.led(key, cycle)

    def on_response_complete(self) -> None:
        """An answer ended: the next head, if any, must arrive within ``header_timeout``,
        and its first byte within ``timeout_keep_alive``. uvicorn's own version, but the
        keep-alive bound rides on the lazy head deadline instead of a timer per answer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            self.deadline.arm()
        elif self.refusal is not None:  # a head refused behind the answers now all sent
            held = getattr(self.cycle, "transport", None)
            if isinstance(held, HeadHolder):
                held.flush()  # (a bodiless answer's head is held for a loop turn)
            send_refusal(self.transport, self.refusal)
        else:
            self.unsent_seen = sys.maxsize  # (this answer's bytes are still to be taken)
            self.deadline.arm(self.timeout_keep_alive)

    def _idle_timed_out(self) -> bool:
        """The keep-alive bound passed: close, unless a head has begun (then it has until
        the head deadline) or an answer is under way."""
        if not self.in_head or self.head_bytes or self.transport.is_closing() \
                or (self.cycle is not None and not self.cycle.response_complete):
            return False
        # A client still reading the last answer (slowly: the kernel holds MBs of it) is not
        # idle while it takes bytes; one that takes none in a whole bound is
        left = self.transport.get_write_buffer_size() + unsent_bytes(self.transport)
        if 0 < left < self.unsent_seen:
            self.unsent_seen = left
            self.deadline.postpone(self.timeout_keep_alive)
            return False
        self.timeout_keep_alive_handler()
        return True

    def _head_timed_out(self) -> None:
        if not self.in_head or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined answer is under way; the deadline is armed again when it ends
        if self.head_bytes == 0:
            self.transport.close()  # nothing of a request arrived: nothing to answer
            return
        self.refusal = timeout_error(self.limits)
        send_refusal(self.transport, self.refusal)

    def _reset_head(self) -> None:
        self.in_head = True
        self.head_start = b""
        self.head_bytes = self.target_bytes = self.field_bytes = self.field_count = 0
        self.hosts = 0

    def _refuse(self, error: HTTPError) -> None:
        self.refusal = error
        raise _Refused(error.message)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that grows past the cap without finishing a field.

        A chunk that starts at a request boundary, while no answer is under way, may be a
        head the fast lane answered before, byte for byte: it is answered again without
        parsing (`edgeproxy.cache.replays`). A chunk that was exactly one request the lane
        answered from memory is kept for that."""
        if self.refusal is not None or self.tunnel:  # (`PipelinedRequests`)
            return
        boundary = self.in_head and not self.head_bytes and self.fast is not None \
            and not self.pipeline and (self.cycle is None or self.cycle.response_complete)
        if boundary and len(data) <= HEAD_MAX and self._replay(data):
            return
        if self.in_head:
            if not self.head_bytes:
                self.head_start = data  # (for `send_400_response`: a method never parsed)
            self.head_bytes += len(data)
        self.begun = self.lane_answered = 0
        self._feed(data)
        if self.refusal is None and self.in_head and self.head_bytes > self.cap:
            self.refusal = HTTPError(431, "headers_too_large",
                                     f"the request head exceeds {self.cap} bytes")
            self.send_400_response("")
        elif boundary and self.begun == 1 and self.lane_answered and self.in_head \
                and not self.head_bytes and self.refusal is None \
                and not self.transport.is_closing():
            # (one request, answered by the lane, nothing after it in the chunk; its body
            # may still be going out from its files)
            node, _log = self.fast  # type: ignore[misc]
            node.keep_fast_reply(data)

    def _replay(self, data: bytes) -> bool:
        """Answer ``data`` as the lane answered the same head before; False: parse it."""
        node, access_log = self.fast  # type: ignore[misc]
        started = time.perf_counter()
        replayed = node.fast_replay(data, started, self.server_state.default_headers,
                                    self.zerocopy)
        if replayed is None:
            return False
        buffers, record, sent = replayed
        rest = write_answer(self.transport, buffers)
        if access_log is not None:
            access_log.write({"client": self.client, "method": "GET", "raw_path": record.url,
                              "path": record.path, "http_version": "1.1",
                              "headers": record.headers},
                             record.status, sent, node.hit_x_cache, time.perf_counter() - started)
        self._answered(buffers[-1], rest)
        return True

    def on_message_begin(self) -> None:
        """A new request: its target and fields are counted from zero (its bytes are counted
        from the end of the previous request, as they arrive). The ASGI scope uvicorn makes
        here waits for `on_headers_complete`: a fast-lane answer needs none."""
        self.begun += 1
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.target_bytes = self.field_bytes = self.field_count = self.hosts = 0

    def _begin_scope(self) -> None:
        """uvicorn's scope for the request whose head was just parsed (its own
        `on_message_begin`, the parsed target and fields kept)."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url, self.headers, self.expect_100_continue = url, headers, expect
        self.scope["headers"] = headers

    def on_url(self, url: bytes) -> None:
        """Called for each piece of the target: 414 once it is too long."""
        self.target_bytes += len(url)
        if self.target_bytes > self.limits.max_target_length:
            self._refuse(HTTPError(414, "uri_too_long", f"the request target is longer than "
                                   f"{self.limits.max_target_length} bytes",
                                   max_length=self.limits.max_target_length))  # fmt: skip
        self.url += url  # (uvicorn's `on_url`, inline: a frame less per request)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Called once per complete field: 431 once there are too many or too many bytes.

        Here the bound is the one of a proxied request (whether this one carries Via is only
        known at the end of its head): the guard applies the exact limit to the parsed head.
        """
        self.field_count += 1
        self.field_bytes += len(name) + len(value) + FIELD_OVERHEAD
        if self.field_count > self.limits.max_header_count + PROXIED_FIELDS:
            self._refuse(HTTPError(431, "headers_too_large", f"the request has more than "
                                   f"{self.limits.max_header_count} header fields",
                                   max_count=self.limits.max_header_count))  # fmt: skip
        if self.field_bytes > self.limits.max_header_bytes + PROXIED_BYTES:
            self._refuse(HTTPError(431, "headers_too_large", f"the request header fields exceed "
                                   f"{self.limits.max_header_bytes} bytes",
                                   max_bytes=self.limits.max_header_bytes))  # fmt: skip
        super().on_header(name, value)
        if self.headers[-1][0] == b"host":  # (uvicorn's lower-cased name)
            # the lane takes one valid Host only; the guard answers the rest (RFC 9112 §3.2)
            self.hosts += 1 if valid_host(value) else 2

    def on_headers_complete(self) -> None:
        """The head is complete; from here on bytes are body, not head."""
        self.in_head = False
        self.deadline.cancel()
        if self._serve_fast():
            return
        self._begin_scope()
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:  # its task has not run yet
            cycle.transport = HeadHolder(self.transport, self.loop)  # type: ignore[assignment]
            extensions = cycle.scope.setdefault("extensions", {})
            if self.zerocopy:  # ASGI's zero-copy send extension: large hits by sendfile(2)
                extensions[ZEROCOPY] = {}
            if cycle.scope["http_version"] == "1.1":  # (no 1xx to an HTTP/1.0 client)
                extensions[INFORMATIONAL] = {}
            cycle.send = ZeroCopySend(  # type: ignore[assignment]
                cycle, cycle.send, self.limits.send_timeout, partial(self._lead_began, cycle))
            if any(name in (b"content-length", b"transfer-encoding")
                   for name, _ in self.headers):
                self.body_deadline.arm()  # a body may follow: its first byte within the bound
            if self.fast_declined:
                cycle.scope[FAST_DECLINED] = True  # type: ignore[literal-required]  # the app need not ask again

    def on_body(self, body: bytes) -> None:
        """Body bytes: the next must come within ``body_timeout``."""
        self.body_deadline.arm()
        super().on_body(body)

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: no body to wait for."""
        self.body_deadline.close()
        super().connection_lost(exc)

    def _body_timed_out(self) -> None:
        """No byte of the request body for ``body_timeout`` (nginx's client_body_timeout):
        the app sees the client gone (an upload keeps what arrived), the client gets 408 if
        no answer began, and the connection closes. Not while reading is paused because the
        app has not taken the bytes already here: then the wait is ours, not the client's."""
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete \
                or self.transport.is_closing():
            return
        if self.flow.read_paused:
            self.body_deadline.arm()
            return
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
            return
        self.refusal = HTTPError(408, "request_timeout", "no byte of the request body arrived "
                                 f"for {self.limits.body_timeout:g} seconds")
        send_refusal(self.transport, self.refusal)

    def on_message_complete(self) -> None:
        """The request is complete; what follows is the next request's head."""
        self.body_deadline.cancel()
        if self.fast_served:
            self.fast_served = False  # answered already, with no cycle of its own
        else:
            super().on_message_complete()
        self._reset_head()

    def _serve_fast(self) -> bool:
        """Answer a plain GET of a hot object now; False: the app answers it."""
        self.fast_declined = False
        cycle = self.cycle
        if self.fast is None or (cycle is not None and not cycle.response_complete) \
                or self.pipeline:
            return False  # an earlier answer is still going out: answers keep their order
        url: bytes = self.url
        parser = self.parser
        if not plain_target(url) \
                or parser.get_method() != b"GET" or parser.get_http_version() != "1.1" \
                or not parser.should_keep_alive() \
                or self.field_count > self.limits.max_header_count \
                or self.field_bytes > self.limits.max_header_bytes or self.hosts != 1:
            return False  # not obviously canonical, a body, near a limit: the app decides
        headers: list[tuple[bytes, bytes]] = self.headers  # (the lane declines a body, an upgrade)
        node, access_log = self.fast
        started = time.perf_counter()
        path = url.decode("latin-1")
        reply = node.fast_reply(path, headers, started, self.server_state.default_headers,
                                self.zerocopy)
        if reply is None:
            self.fast_declined = True
            return False
        data, status, sent = reply
        rest = write_answer(self.transport, data)
        self.fast_served = True
        self.lane_answered = 1
        if access_log is not None:
            access_log.write({"client": self.client, "method": "GET", "raw_path": url,
                              "path": path, "http_version": "1.1", "headers": headers},
                             status, sent, node.hit_x_cache, time.perf_counter() - started)
        self._answered(data[-1], rest)
        return True

    def _answered(self, body: bytes | memoryview | FilePiece, rest: int) -> None:
        """A lane answer is written: the next request may come, or the rest of its body
        goes out first, as the socket takes it."""
        if rest:
            assert isinstance(body, FilePiece)
            answer = Sending()
            self.cycle = answer  # type: ignore[assignment]
            answer.task = self.loop.create_task(self._send_rest(answer, body, rest))
        else:
            self.on_response_complete()

    async def _send_rest(self, answer: Sending, piece: FilePiece, rest: int) -> None:
        """The rest of a fast-lane answer; then the next pipelined request, if any."""
        try:
            done = await send_rest(self.transport, piece, rest, self.limits.send_timeout)
        except Exception:  # the file ended short or failed: the answer must not look whole
            self.transport.abort()
            done = False
        answer.response_complete = True
        if not done:
            return
        if not answer.keep_alive:
            self.transport.close()
            return
        self.on_response_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, ours when the error is a refused head. A
        well-formed request line whose method llhttp does not know is said to be that (RFC
        9110 §9.1 suggests 501; bad input is a 4xx here, as methods are case-sensitive and
        ``get`` is a client's mistake)."""
        if self.refusal is None and isinstance(sys.exc_info()[1], HttpParserInvalidMethodError) \
                and _REQUEST_LINE.match(self.head_start):
            method = self.head_start.partition(b" ")[0].decode()
            self.refusal = HTTPError(400, "unknown_method", f"{method} is not a method this "
                                     "server knows (methods are case-sensitive)")
        if self.refusal is None:  # (llhttp's: uvicorn's answer was text, and went at once)
            self.refusal = HTTPError(400, "bad_request", "the request is not valid HTTP/1.1")
        if self.pipeline or (self.cycle is not None and not self.cycle.response_complete):
            # Answers to the requests before it are under way: it goes after them, in order
            # (RFC 9112 §9.3.2). It went at once, into an answer's body, or as the answer of
            # a valid request before it, which then had none; a refused head closed the
            # connection, cutting the answer under way (found from outside).
            return  # (nothing after it is read: `data_received`; `on_response_complete`)
        send_refusal(self.transport, self.refusal)
