"""The one place where failures become statuses (httpx's error tree, mapped at the edge).

Public bodies say what kind of failure it was, never the upstream's internals (addresses,
TLS errors): those go to the log.
"""

from __future__ import annotations

import logging

from ..errors import (
    FillAborted,
    HTTPError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from ..quietlog import QuietLog

log = logging.getLogger("edgeproxy.cache")
# An upstream that is down fails every request: logged once per kind and tier, then once per
# window with a count (46,000 lines in 40 s of a shield outage, 5,000 a second at the peak).
UPSTREAM_LOG_WINDOW = 10.0
_upstream_log = QuietLog(log, UPSTREAM_LOG_WINDOW)

# (kind, status, error code, public message); the first matching kind wins.
STATUS_OF: tuple[tuple[type[UpstreamError], int, str, str], ...] = (
    (UpstreamTimeout, 504, "upstream_timeout", "the upstream did not answer in time"),
    (UpstreamUnreachable, 502, "upstream_unavailable", "the upstream could not be reached"),
    (UpstreamProtocolError, 502, "bad_upstream_answer", "the upstream sent an invalid answer"),
    (FillAborted, 502, "fill_aborted", "the upstream transfer broke off"),
    (UpstreamError, 502, "upstream_error", "the upstream failed"),
)


def http_error(exc: UpstreamError, tier: str) -> HTTPError:
    """The client-facing error for an upstream failure at ``tier``."""
    for kind, status, code, message in STATUS_OF:
        if isinstance(exc, kind):
            _upstream_log.log(logging.WARNING, (tier, code), "%s: %s (%s)", tier, message, exc)
            return HTTPError(status, code, message, tier=tier)
    raise AssertionError("unreachable: UpstreamError is the last row")


def internal_error(exc: Exception, tier: str, key: str | None) -> HTTPError:
    """The client-facing error for a bug (any other exception): a JSON 500 like every other
    answer of the node's, its traceback in the log (uvicorn's own was plain text)."""
    log.error("%s: internal error on %s", tier, key, exc_info=exc)
    return HTTPError(500, "internal_error", "the cache failed to answer this request",
                     tier=tier)
