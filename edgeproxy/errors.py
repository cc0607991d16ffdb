"""One error hierarchy for the whole package.

Library code raises these; the HTTP boundary (`edgeproxy.http.error_response`) turns an
`HTTPError` into a JSON response, and the CLI turns any `EdgeProxyError` into a one-line message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class EdgeProxyError(Exception):
    """Base of every error edgeproxy raises on purpose."""


class ConfigError(EdgeProxyError):
    """The configuration is invalid; the message names the offending key."""


class BlobFormatError(EdgeProxyError):
    """A blob is not in the edgeproxy encrypted format (bad magic, version, size)."""


class IntegrityError(BlobFormatError):
    """A MAC, hash or length check failed: the bytes are not the ones that were promised."""


class UpstreamError(EdgeProxyError):
    """An upstream (shield, origin, object store) failed; the subclasses say how.

    A cache node maps each kind to a status in one table at its boundary
    (`edgeproxy.cache.boundary`), never by reading the message.
    """


class UpstreamTimeout(UpstreamError):
    """No answer (or no further bytes) within the configured time: 504."""


class UpstreamUnreachable(UpstreamError):
    """The connection could not be made, was refused or was reset before an answer: 502."""


class UpstreamRefused(UpstreamUnreachable):
    """No connection could be made at all (refused, no route, TLS handshake failed): the one
    failure after which a node stops trying for a moment (fail fast, serve stale)."""


class UpstreamProtocolError(UpstreamError):
    """The upstream answered something that is not valid HTTP, or not what was asked: 502."""


class FillAborted(UpstreamError):
    """A fill that other requests were following broke off or failed a check midway."""


class FillLost(FillAborted):
    """A slice went away before a reader took any byte of it: another worker's fill ended
    with the slice unstored (given up, passed through, or stored and evicted at once), or
    each join lost its claim (`Coalescer.join`). The reader may join it again (a request
    whose head is not out looks up again), its answer intact."""


class AnswerCut(EdgeProxyError):
    """An answer broke off after its status line went out, and why is logged already: raised
    so that the server aborts the connection, the one way a client learns the body is short
    (the server then logs no traceback for it: `edgeproxy.server.AnsweredFailures`)."""


class StorageFault(EdgeProxyError):
    """The cache's disk or index failed (full disk, I/O error, a broken SQLite file): the
    request goes on without storing, as a pass-through."""


class ClientError(EdgeProxyError):
    """The media API answered a client-library call with an error."""

    def __init__(self, status: int, error: str, message: str) -> None:
        # (status 0: no answer came, and the message says why; not an HTTP status "0")
        super().__init__(f"{status} {error}: {message}" if status else f"{error}: {message}")
        self.status = status
        self.error = error
        self.message = message


class HTTPError(EdgeProxyError):
    """An error answered to an HTTP client as ``{"error": code, "message": ..., **extra}``."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the client."""
        return {"error": self.error, "message": self.message, **self.extra}
