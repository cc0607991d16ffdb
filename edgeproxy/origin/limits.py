"""What the media API accepts: content types, sizes per class, rate limits and quota.

The type and size rules (`check_type`, `check_size`) are pure functions of `LimitsConfig`,
applied when an upload is *requested* (``/v1/media/upload/request`` or tus creation), so a
refused upload never stores a byte: 415 for a type that is not allowed or is executable (by
MIME type, or by the extension of a ``file_name`` the client chose to send), 413 for a size over
its class limit.

Rate limits and the storage quota need shared, consistent state. They are checked in the same
SQLite transaction (``BEGIN IMMEDIATE``) that records the upload (`Records.create_upload`), so
they hold across concurrent requests, across threads, and across uvicorn worker processes
sharing one database: the count and the insert cannot interleave with another request's.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

from .. import crypto
from ..config import LimitsConfig
from ..errors import HTTPError

RATE_WINDOW = 60.0  # seconds: the limits are "per minute"


def essence(mimetype: str) -> str:
    """``type/subtype`` in lower case, without parameters."""
    return mimetype.split(";", 1)[0].strip().lower()


def size_class(mimetype: str) -> str:
    """The size-limit class of a MIME type: image, audio, video, archive or document.

    The same mapping the blob format uses for its media type, so a client and the server agree.
    """
    return crypto.media_type_for(mimetype)


def max_size(limits: LimitsConfig, mimetype: str) -> int:
    """The largest media (plaintext) size accepted for ``mimetype``."""
    limit: int = getattr(limits, f"max_{size_class(mimetype)}_size")
    return limit


def max_blob_size(media_size: int) -> int:
    """The largest encrypted blob that holds at most ``media_size`` bytes of media."""
    return crypto.enc_length(media_size)


def _extension(file_name: str) -> str:
    # Either separator: a name from a Windows client is "C:\\x\\setup.exe".
    name = PureWindowsPath(PurePosixPath(file_name).name).name
    # As Windows would write the file: "x.exe::$DATA" (an NTFS stream) is x.exe, and
    # trailing dots and spaces are dropped ("x.exe. " is x.exe).
    name = name.split(":", 1)[0].rstrip(". \t\r\n\f\v")
    return name.rsplit(".", 1)[1].lower().strip() if "." in name else ""


def check_file_name(file_name: str) -> None:
    """422 for a ``file_name`` a file system would not take as written: control characters
    (a NUL ends the name for C code: "x.exe\\0.png" is x.exe), or longer than 1024."""
    if len(file_name) > 1024 or any(ord(c) < 32 or ord(c) == 127 for c in file_name):
        raise HTTPError(422, "invalid_field", "file_name must be at most 1024 characters, "
                        "without control characters", field="file_name")  # fmt: skip


def check_type(limits: LimitsConfig, mimetype: str, file_name: str | None = None) -> None:
    """415 if ``mimetype`` (or ``file_name``'s extension) is refused, else None."""
    kind = essence(mimetype)
    if any(fnmatch.fnmatchcase(kind, p.lower()) for p in limits.blocked_types):
        raise HTTPError(415, "unsupported_media_type", f"executable content ({kind}) is "
                        "not accepted", file_type=kind, reason="executable")  # fmt: skip
    ext = _extension(file_name) if file_name else ""
    if ext and ext in {e.lower().lstrip(".") for e in limits.blocked_extensions}:
        raise HTTPError(415, "unsupported_media_type", f"executable files (.{ext}) are not "
                        "accepted", file_type=kind, reason="executable_extension",
                        extension=ext)  # fmt: skip
    if not any(fnmatch.fnmatchcase(kind, p.lower()) for p in limits.allowed_types):
        raise HTTPError(415, "unsupported_media_type", f"{kind} is not an accepted type",
                        file_type=kind, reason="not_allowed",
                        allowed=list(limits.allowed_types))  # fmt: skip


def check_size(limits: LimitsConfig, mimetype: str, blob_size: int, global_max: int) -> None:
    """413 if a blob of ``blob_size`` bytes is over its class limit or the global limit."""
    limit = min(max_size(limits, mimetype), global_max)
    if blob_size > max_blob_size(limit):
        raise HTTPError(413, "too_large", f"file_size exceeds the {size_class(mimetype)} limit "
                        f"of {limit} bytes", field="file_size", max_size=limit,
                        size_class=size_class(mimetype))  # fmt: skip


class LimitExceeded(Exception):
    """Base of the refusals decided inside the upload-recording transaction."""

    def to_http(self) -> HTTPError:
        """The HTTP answer for this refusal."""
        raise NotImplementedError


@dataclass
class RateLimited(LimitExceeded):
    """Too many uploads in the last minute for a user or a conversation."""

    scope: str  # "user" or "conversation"
    limit: int
    retry_after: int  # whole seconds until one more upload is allowed

    def to_http(self) -> HTTPError:
        """429 with ``Retry-After``."""
        return HTTPError(429, "rate_limited", f"at most {self.limit} uploads per minute per "
                         f"{self.scope}; retry in {self.retry_after} s", scope=self.scope,
                         limit=self.limit, window=int(RATE_WINDOW), retry_after=self.retry_after,
                         headers={"Retry-After": str(self.retry_after)})  # fmt: skip


@dataclass
class QuotaExceeded(LimitExceeded):
    """The user's stored bytes plus this upload would pass their quota."""

    quota: int
    used: int
    requested: int

    def to_http(self) -> HTTPError:
        """507 Insufficient Storage naming the quota, the use and the request."""
        return HTTPError(507, "quota_exceeded", f"this upload of {self.requested} bytes would "
                         f"exceed the storage quota of {self.quota} bytes ({self.used} used)",
                         quota=self.quota, used=self.used,
                         requested=self.requested)  # fmt: skip


@dataclass(frozen=True)
class UploadAllowance:
    """The per-request limits `Records.create_upload` enforces (0 = no limit)."""

    per_user_per_minute: int = 0
    per_conversation_per_minute: int = 0
    quota: int = 0

    @classmethod
    def from_config(cls, limits: LimitsConfig) -> UploadAllowance:
        """The allowance of a config's ``limits`` section."""
        return cls(limits.uploads_per_minute_per_user,
                   limits.uploads_per_minute_per_conversation,
                   limits.storage_quota_per_user)  # fmt: skip
