"""Blob downloads that survive a dropped connection: the fetch resumes where it stopped.

A blob never changes under its URL (it is content-addressed), and the client checks every
byte (the blob's hash and chunk MACs) before it writes any plaintext, so the rest of an answer
cut short may come from another request: ``Range: bytes=<next>-<last>``, which must be
answered 206 with exactly that span (anything else is an `IntegrityError`, never a splice). A
cache node cuts an answer whose bytes fail a check once its status line is out, and nodes
restart; both are retried here, as are 502, 503 and 504, with the uploads' bounded retries
and backoff (a refused connection too, once a node has answered: it may be restarting). Other
errors are final, and so is a refused first connection (no node there). A node that ignores
the Range of a resumption (answers 200) is read again from the first byte.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO

import httpx

from ..errors import ClientError, IntegrityError
from ..http import parse_content_range
from .responses import check_partial, content_length, raise_for_status, unsigned

__all__ = ["RETRY_STATUSES", "STALL_BYTES", "STALL_WINDOW", "fetch_blob"]

RETRY_STATUSES = frozenset({502, 503, 504})  # a node or its upstream away for a moment
# A body that brings fewer than STALL_BYTES in any STALL_WINDOW seconds has stalled (curl's
# --speed-limit/--speed-time): the attempt ends and counts as a failure, as a cut one does.
# The read timeout alone is per read: a node dripping a byte every 25 s held a download open
# with no end.
STALL_WINDOW = 60.0
STALL_BYTES = 64 * 1024


def fetch_blob(http: httpx.Client, url: str, sink: IO[bytes], span: tuple[int, int] | None,
               blob_length: int | None, *, retries: int, backoff: float, max_backoff: float,
               progress: Callable[[int, int | None], None] | None = None,
               ) -> tuple[int, str | None, int]:
    """Stream the blob at ``url`` (or its inclusive byte ``span``) into ``sink``, resuming
    after a cut or a passing 502/503/504 up to ``retries`` times; the first answer's status
    and X-Cache, and the body bytes in ``sink``."""
    shown = unsigned(url)  # (a signed URL's signature stays out of messages)
    first = span[0] if span is not None else 0
    # None: to the end, learnt from the answer. A whole blob of known length ends where that
    # says, not where a node claims: an endless body was written to disk without limit.
    last = span[1] if span is not None else None if blob_length is None else blob_length - 1
    received = 0
    status, x_cache = 0, None
    failures = 0
    cause: BaseException | None = None  # the last attempt's transport error
    while True:
        at = first + received
        headers = {"Accept-Encoding": "identity"}  # (a compressed body breaks byte offsets)
        if span is not None or received:
            headers["Range"] = f"bytes={at}-{'' if last is None else last}"
        try:
            with http.stream("GET", url, headers=headers) as response:
                if response.status_code in RETRY_STATUSES:
                    problem, cause = f"GET {shown} answered {response.status_code}", None
                else:
                    raise_for_status(response)  # 4xx and other errors are final
                    if received and response.status_code == 200 and span is None:
                        sink.seek(0)  # the node ignored the resumption's Range: start over
                        sink.truncate()
                        received, at = 0, 0
                    want = _expected(response, at, last, blob_length, span is None and not received)
                    if not status:
                        status, x_cache = response.status_code, response.headers.get("x-cache")
                        if span is None and want is not None:
                            last = want - 1  # the whole blob's last byte
                            blob_length = want  # (a resumption's Content-Range must say it)
                    total = None if last is None else last - first + 1
                    window, window_bytes = time.monotonic(), 0
                    for piece in response.iter_bytes():
                        window_bytes += len(piece)
                        if time.monotonic() - window >= STALL_WINDOW:
                            if window_bytes < STALL_BYTES:
                                raise httpx.ReadTimeout(
                                    f"{window_bytes} bytes in {STALL_WINDOW:g} s: stalled",
                                    request=response.request)
                            window, window_bytes = time.monotonic(), 0
                        received += len(piece)
                        if total is not None and received > total:
                            raise IntegrityError(f"GET {shown} sent more than the {total} bytes "
                                                 "asked")
                        sink.write(piece)
                        if progress is not None:
                            progress(received, total)
                    if total is None or received == total:
                        sink.flush()
                        return status, x_cache, received
                    problem, cause = f"GET {shown} ended after {received} of {total} bytes", None
        except httpx.TransportError as exc:
            if isinstance(exc, httpx.ConnectError) and not status:
                # nothing has answered yet: no node there (a wrong URL, a stack not running)
                raise ClientError(0, "connection_failed", f"GET {shown}: {exc}") from exc
            problem, cause = f"GET {shown} at byte {first + received}: {exc}", exc
        failures += 1
        if failures > retries:
            raise ClientError(0, "connection_failed",
                              f"gave up after {failures} attempts; last: {problem}") from cause
        time.sleep(min(backoff * 2 ** (failures - 1), max_backoff))


def _expected(response: httpx.Response, at: int, last: int | None, blob_length: int | None,
              whole: bool) -> int | None:
    """The body length this answer must have (None: not announced); raises if it is not
    the answer asked for."""
    if whole:
        if response.status_code != 200:
            raise ClientError(response.status_code, "unexpected_status",
                              f"GET answered {response.status_code}, not 200")
        length = content_length(response)
        if blob_length is not None and length is not None and length != blob_length:
            raise IntegrityError(f"Content-Length {length} is not the {blob_length} bytes "
                                 "the blob has")
        return length
    if last is None:  # a resumption of a whole blob of unannounced length
        if blob_length is None:
            if response.status_code != 206:
                raise ClientError(response.status_code, "range_not_honoured",
                                  f"asked for bytes {at}-, got status {response.status_code}")
            content_range = response.headers.get("content-range", "")
            parsed = parse_content_range(content_range)
            if parsed is None or parsed[0] is None or parsed[0].start != at:
                raise IntegrityError(f"Content-Range {content_range!r} does not start at "
                                     f"byte {at}, where the answer was cut")
            return None
        last = blob_length - 1
    return check_partial(response, at, last, blob_length)
