"""What the client checks in an answer: an API error (the JSON body's code), and that a ranged
blob fetch got exactly the bytes it asked for."""

from __future__ import annotations

import contextlib
from typing import Any

import httpx

from ..errors import ClientError, IntegrityError
from ..http import parse_content_range


def unsigned(url: str) -> str:
    """``url`` as an error message may show it: without its query, where a signed upload
    URL carries the signature that lets anyone who reads it write the upload."""
    return url.partition("?")[0]


def raise_for_status(response: httpx.Response) -> None:
    """`ClientError` built from the API's JSON error body (or the raw text if it has none)."""
    if response.is_success:
        return
    response.read()
    status = response.status_code
    body: Any = None
    with contextlib.suppress(ValueError):
        body = response.json()
    if isinstance(body, dict) and body.get("error"):
        raise ClientError(status, str(body["error"]), str(body.get("message", "")))
    text = response.text.strip()[:200] or response.reason_phrase
    raise ClientError(status, f"http_{status}", text)


def error_code(response: httpx.Response) -> str | None:
    """The ``error`` code of the API's JSON error body, if it has one."""
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
    return None


def upload_offset(response: httpx.Response, length: int) -> int:
    """The ``X-Upload-Offset`` the origin answered: 0..``length``, or `ClientError`
    ``bad_response`` (a missing or junk header was a KeyError/ValueError traceback)."""
    value = response.headers.get("x-upload-offset", "")
    if not (value.isascii() and value.isdigit()) or int(value) > length:
        raise ClientError(response.status_code, "bad_response",
                          f"{response.request.method} {unsigned(str(response.request.url))} "
                          f"answered X-Upload-Offset {value!r}, not a byte of the "
                          f"{length}-byte upload")  # fmt: skip
    return int(value)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object body, or `ClientError` ``bad_response``."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ClientError(response.status_code, "bad_response",
                          f"{response.request.method} {unsigned(str(response.request.url))} "
                          "did not answer a JSON object")  # fmt: skip
    return data


def required(data: dict[str, Any], key: str, what: str) -> str:
    """``data[key]`` as a non-empty string, or `ClientError` ``bad_response`` naming it."""
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ClientError(0, "bad_response", f"{what} has no {key!r}")
    return value


def content_length(response: httpx.Response) -> int | None:
    """The announced body length, if the answer gave a plain one."""
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def check_partial(response: httpx.Response, start: int, end: int,
                  blob_length: int | None) -> int:  # fmt: skip
    """The body length a 206 for blob bytes ``start..end`` (inclusive) must have;
    IntegrityError if the headers disagree."""
    if response.status_code != 206:
        raise ClientError(response.status_code, "range_not_honoured",
                          f"asked for bytes {start}-{end}, "
                          f"got status {response.status_code} instead of 206")  # fmt: skip
    want = end - start + 1
    content_range = response.headers.get("content-range", "")
    parsed = parse_content_range(content_range)
    got = parsed[0] if parsed is not None else None
    if (got is None or parsed is None or (got.start, got.end) != (start, end)
            or (blob_length is not None and parsed[1] not in (None, blob_length))):
        raise IntegrityError(f"Content-Range {content_range!r} does not match the request for "
                             f"bytes {start}-{end}/{blob_length}")  # fmt: skip
    length = response.headers.get("content-length")
    if length is not None and int(length) != want:
        raise IntegrityError(f"Content-Length {length} does not match the {want} bytes asked")
    return want
