"""The fields of a message payload (what a receiver gets: media URL, key, hashes, type), read
and checked: a malformed field is a `ValueError` naming it, never a traceback."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

from .. import crypto

__all__ = ["field", "media_type", "sha256_field", "unb64"]

def unb64(payload: Mapping[str, Any], key: str) -> bytes:
    """A payload's base64 field, decoded."""
    value = field(payload, key)
    try:
        return base64.b64decode(str(value), validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"payload field {key!r} is not valid base64") from exc


_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def field(payload: Mapping[str, Any], key: str) -> Any:
    """A payload's field; ValueError if it is missing."""
    if payload.get(key) is None:
        raise ValueError(f"payload is missing {key!r}")
    return payload[key]


def sha256_field(payload: Mapping[str, Any], key: str, *, required: bool = True) -> str | None:
    """A payload's hex SHA-256 field, lower-cased; ValueError if it is not one."""
    value = field(payload, key) if required else payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ValueError(f"payload field {key!r} is not a hex SHA-256")
    return value.lower()


def media_type(payload: Mapping[str, Any]) -> str:
    """The blob's media type: the payload's ``type``, else the one its ``mimetype`` maps to."""
    kind, mimetype = payload.get("type"), payload.get("mimetype")
    if kind:
        return str(kind)
    if not isinstance(mimetype, str) or not mimetype:
        raise ValueError("payload has neither 'type' nor 'mimetype'")
    return crypto.media_type_for(mimetype)
