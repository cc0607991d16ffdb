"""Pipelined requests, where uvicorn's httptools protocol lost track of them.

Requests with ``Upgrade`` are served as plain HTTP/1.1, and what is pipelined behind them
too. No node speaks anything but HTTP/1.1, and RFC 9110 §7.8 lets a server ignore ``Upgrade``.
llhttp stops at the end of a request that asks for one (its answer is then under way), and
uvicorn's httptools protocol dropped every byte after it, with a warning per read: a request
pipelined behind it was never answered, nor any later one on the connection, until the
keep-alive timeout closed it (found from outside, on every role). The parser goes on with the
bytes that follow instead. A CONNECT's bytes are a tunnel's, never HTTP: they are dropped,
and the connection closes after the CONNECT's answer (a 405).

A lost connection is seen by the answer under way. uvicorn marks only the last request it
parsed as disconnected; with requests pipelined behind the one being answered, that one
went on writing to the closed transport, and each client that left so cost an ERROR
"internal error" with a traceback in the log (found from outside).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

__all__ = ["PipelinedRequests"]


class PipelinedRequests:
    """For uvicorn's `HttpToolsProtocol` (listed before it): `_feed` parses received bytes
    as its ``data_received`` does, past any request's ``Upgrade``; ``tunnel``: the bytes
    after a CONNECT, which the protocol's reader must then drop; ``answering``: the cycle
    whose task was started last (set by the protocol), which a lost connection disconnects
    too."""

    parser: Any
    scope: dict[str, Any]
    cycle: RequestResponseCycle
    logger: logging.Logger
    tunnel = False
    answering: RequestResponseCycle | None = None
    # (the protocol's own)
    _unset_keepalive_if_required: Callable[[], None]
    send_400_response: Callable[[str], None]

    def _feed(self, data: bytes) -> None:
        """Feed ``data`` to the parser: a parse error is answered 400 (uvicorn's way)."""
        self._unset_keepalive_if_required()
        while True:
            try:
                self.parser.feed_data(data)
            except HttpParserUpgrade as upgrade:
                if self.scope.get("method") == "CONNECT":
                    self.tunnel = True
                    if self.cycle is not None:
                        self.cycle.keep_alive = False
                    return
                data = data[upgrade.args[0]:]
                if data:
                    continue
            except HttpParserError:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            return

    def connection_lost(self, exc: Exception | None) -> None:
        """uvicorn's, with the answer under way told too when it is not the last parsed."""
        answering = self.answering
        if answering is not None and answering is not self.cycle \
                and not answering.response_complete:
            answering.disconnected = True
            answering.message_event.set()
        super().connection_lost(exc)  # type: ignore[misc]
