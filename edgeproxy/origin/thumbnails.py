"""The checks a confirm makes of what a client sent besides the blob: its thumbnail (a blob
of the same format, base64 in the JSON body), and the refusal they all raise."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ..crypto import check_blob_layout
from ..errors import BlobFormatError, HTTPError

__all__ = ["Rejected", "decode_thumbnail"]


class Rejected(Exception):
    """A confirm check failed: the upload is failed and answered 422."""

    def __init__(self, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.error = HTTPError(422, error, message, **extra)


def decode_thumbnail(text: str, limit: int) -> bytes:
    """The thumbnail's bytes, checked as a blob of at most ``limit`` bytes."""
    if len(text) > (limit + 2) // 3 * 4:  # refuse before decoding an oversized string
        raise Rejected("bad_thumbnail", f"thumbnail exceeds {limit} bytes",
                       reason="too_large", max_size=limit)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Rejected("bad_thumbnail", "thumbnail_base64 is not valid base64",
                       reason="bad_base64") from None
    if len(data) > limit:
        raise Rejected("bad_thumbnail", f"thumbnail exceeds {limit} bytes",
                       reason="too_large", max_size=limit)
    try:
        check_blob_layout(data[:16], len(data))
    except BlobFormatError as exc:
        raise Rejected("bad_thumbnail", f"thumbnail is not a valid blob: {exc}",
                       reason=str(exc)) from None
    return data
