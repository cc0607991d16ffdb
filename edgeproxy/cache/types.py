"""Types shared by the cache node's modules (starlette.types' role)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

# A scope key a server sets when its own fast lane has looked at the request already
# (`edgeproxy.protocol`): the node's ASGI fast lane need not look again.
FAST_DECLINED = "edgeproxy.fast_declined"

# ASGI's zero-copy send extension (a server offers it in ``scope["extensions"]``): a message
# of this type carries ``file``, ``offset``, ``count`` and ``more_body``, and the server sends
# those file bytes itself (`edgeproxy.zerocopy`). Ours may also carry ``unchanged``, a check
# the server makes as it sends (a stored file written to stops the answer).
ZEROCOPY = "http.response.zerocopysend"
# An interim (1xx) answer before the final one, for servers that offer it: RFC 9110 §15.2
# (a proxy forwards the 1xx answers it did not ask for; HTTP/1.0 clients get none).
INFORMATIONAL = "http.response.informational"
