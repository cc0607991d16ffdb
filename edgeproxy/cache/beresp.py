"""``beresp``: the facts of one upstream response, read once its headers are in."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from ..errors import UpstreamError
from ..http import parse_content_range
from . import policy

# Bodies of answers we do not slice (404, 5xx...) are read whole; cap them so a misbehaving
# upstream cannot make us buffer much.
SMALL_BODY_MAX = 64 * 1024


@dataclass
class BeResp:
    """Facts of one upstream response (``beresp``), known once its headers are in."""

    status: int
    headers: list[tuple[str, str]]
    length: int | None  # complete length of the representation
    etag: str | None
    last_modified: str | None
    content_type: str | None
    request_time: float
    response_time: float
    body_start: int = 0  # offset in the representation of the first body byte
    body: bytes | None = None  # small unsliced answers only
    x_cache: str | None = None

    @property
    def header_map(self) -> dict[str, str]:
        """First value of each header, lower-cased names."""
        out: dict[str, str] = {}
        for name, value in self.headers:
            out.setdefault(name.lower(), value)
        return out

    @property
    def version(self) -> str:
        """What ties slices to one representation: the strong ETag, else length and date."""
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return f"{self.length}|{self.last_modified or ''}"


def from_response(resp: httpx.Response, request_time: float) -> BeResp:
    """The `BeResp` of an upstream response whose headers have arrived."""
    headers = policy.forwardable(resp.headers.multi_items())
    length: int | None = None
    body_start = 0
    if resp.status_code == 206:
        parsed = parse_content_range(resp.headers.get("content-range"))
        if parsed is None or parsed[0] is None:
            raise UpstreamError("upstream sent 206 without a valid Content-Range")
        body_start, length = parsed[0].start, parsed[1]
    elif resp.status_code == 200:
        length = int_header(resp.headers.get("content-length"))
    elif resp.status_code == 416:
        parsed = parse_content_range(resp.headers.get("content-range"))
        length = parsed[1] if parsed else None
    return BeResp(
        status=resp.status_code, headers=headers, length=length,
        etag=resp.headers.get("etag"), last_modified=resp.headers.get("last-modified"),
        content_type=resp.headers.get("content-type"), request_time=request_time,
        response_time=time.time(), body_start=body_start, x_cache=resp.headers.get("x-cache"),
    )


async def read_small(resp: httpx.Response) -> bytes:
    """The body of a small, unsliced answer (capped at `SMALL_BODY_MAX`)."""
    body = bytearray()
    async for chunk in resp.aiter_raw():
        body += chunk
        if len(body) > SMALL_BODY_MAX:
            break
    return bytes(body[:SMALL_BODY_MAX])


def int_header(value: str | None) -> int | None:
    """A non-negative integer header value, or None."""
    return int(value) if value is not None and value.isdigit() else None


def upstream_error(exc: BaseException) -> UpstreamError:
    """Any failure of a fetch, as the `UpstreamError` its followers are told about."""
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"upstream timed out ({type(exc).__name__})")
    if isinstance(exc, httpx.HTTPError):
        return UpstreamError(f"upstream unreachable: {exc or type(exc).__name__}")
    if isinstance(exc, asyncio.CancelledError):
        return UpstreamError("fill cancelled")
    return UpstreamError(f"fill failed: {exc!r}")
