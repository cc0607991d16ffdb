"""``beresp``: the facts of one upstream response, read once its headers are in."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from ..errors import UpstreamProtocolError
from ..http import combine_fields, int_header, parse_content_range, strong_date
from . import fields
from .transport import UpstreamResponse
from .types import RawHeaders


@dataclass(slots=True)
class BeResp:
    """Facts of one upstream response (``beresp``), known once its headers are in."""

    status: int
    headers: list[tuple[str, str]]  # end-to-end fields, as received
    length: int | None  # complete length of the representation, when known
    body_length: int | None  # bytes this message's body carries; None: until it ends
    etag: str | None
    last_modified: str | None
    content_type: str | None
    request_time: float
    response_time: float
    body_start: int = 0  # offset in the representation of the first body byte
    x_cache: str | None = None
    slice_sums: str | None = None  # an upstream node's ``Edgeproxy-Slice-Sums`` (`slicesums`)
    # interim (1xx) answers that came first, for the request that led the exchange
    interims: tuple[tuple[int, RawHeaders], ...] = ()
    _version: str | None = None
    _header_map: dict[str, str] | None = None

    @property
    def header_map(self) -> dict[str, str]:
        """Each field's value, repeated lines joined (RFC 9110 §5.3), names lower-cased
        (made once: a miss asked three times; the fields of a `BeResp` are not changed)."""
        if self._header_map is None:
            self._header_map = combine_fields(self.headers)
        return self._header_map

    @property
    def version(self) -> str:
        """What ties slices to one representation.

        The strong validator (`if_range`): a strong ETag, else length and a strong
        Last-Modified; without one, a token of this response alone, so that bytes of two
        answers that no strong validator ties together are never spliced (RFC 9111 §3.4).
        """
        if self._version is None:
            validator = self.if_range
            if validator is not None and validator == self.etag:
                self._version = validator
            elif validator is not None and self.length is not None:
                self._version = f"{self.length}|{validator}"
            else:
                self._version = "u" + uuid.uuid4().hex
        return self._version

    @property
    def content_digest(self) -> fields.MessageDigest | None:
        """The ``Content-Digest`` of a 200 or 206 of known extent, with the span of the
        representation its content is (RFC 9530 §2: it covers this message's bytes only)."""
        value = self.header_map.get("content-digest")
        if value is None or self.status not in (200, 206) or self.body_length is None:
            return None
        return self.body_start, self.body_start + self.body_length - 1, value

    @property
    def if_range(self) -> str | None:
        """A validator fit for ``If-Range`` (RFC 9110 §13.1.5): a strong ETag, or a strong
        Last-Modified when there is no ETag at all (`strong_date`); else None."""
        if self.etag:
            return None if self.etag.startswith("W/") else self.etag
        if strong_date(self.last_modified, self.header_map.get("date"), self.response_time):
            return self.last_modified
        return None


def from_upstream(resp: UpstreamResponse, request_time: float) -> BeResp:
    """The `BeResp` of an upstream response whose headers have arrived."""
    raw = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in resp.headers]
    headers = fields.forwardable(raw)
    first = combine_fields(raw)
    status = resp.status
    content_length = int_header(first.get("content-length"))
    if "transfer-encoding" in first:
        content_length = None  # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
    length: int | None = content_length
    body_start = 0
    if status == 206:
        parsed = parse_content_range(first.get("content-range"))
        if parsed is None or parsed[0] is None or parsed[1] is None:
            raise UpstreamProtocolError("upstream sent 206 without a usable Content-Range")
        body_start, length = parsed[0].start, parsed[1]
        content_length = parsed[0].length
    elif status == 416:
        parsed = parse_content_range(first.get("content-range"))
        length = parsed[1] if parsed else None
    elif status in (204, 304) or status < 200:
        length = content_length = 0
    return BeResp(
        status=status, headers=headers, length=length, body_length=content_length,
        etag=first.get("etag"), last_modified=first.get("last-modified"),
        content_type=first.get("content-type"), request_time=request_time,
        response_time=time.time(), body_start=body_start, x_cache=first.get("x-cache"),
        slice_sums=first.get("edgeproxy-slice-sums"), interims=interims_of(resp),
    )


def interims_of(resp: UpstreamResponse) -> tuple[tuple[int, RawHeaders], ...]:
    """The interim (1xx) answers that came before ``resp``, their hop-by-hop fields removed
    (RFC 9110 §7.6.1), as a proxy passes them on; none from a transport that keeps none."""
    return tuple(
        (status, [(n.encode("latin-1"), v.encode("latin-1")) for n, v in fields.forwardable(
            (n.decode("latin-1"), v.decode("latin-1")) for n, v in headers)])
        for status, headers in getattr(resp, "interims", ()))
