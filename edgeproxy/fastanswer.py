"""What the server protocol keeps of the fast lane: which lane a worker's app has, and a
fast-lane answer still going out from its files."""

from __future__ import annotations

import asyncio
from typing import Any

from .cache.slicefiles import FilePiece
from .zerocopy import write_piece

__all__ = ["LANE", "Sending", "fast_lane_of", "write_answer"]


def fast_lane_of(app: Any) -> tuple[Any, Any] | None:
    """The cache node behind ``app`` and the access log in front of it (or None), when only
    edgeproxy's pass-through wrappers stand between: then a hit may skip them."""
    from .accesslog import AccessLog
    from .guard import RequestGuard
    from .lifecycle import Lifecycle

    log = None
    for _depth in range(8):
        if isinstance(app, AccessLog):
            log = app
        elif not isinstance(app, (Lifecycle, RequestGuard)):
            return (app, log) if callable(getattr(type(app), "fast_reply", None)) else None
        app = vars(app).get("app")
    return None


def write_answer(transport: Any, data: list[bytes | memoryview | FilePiece]) -> int:
    """Write a lane answer (its head, and its body: buffers, or a large one from its files
    by sendfile); the bytes still to send."""
    body = data[-1]
    if isinstance(body, FilePiece):
        head = data[0]
        assert not isinstance(head, FilePiece)
        return write_piece(transport, bytes(head), body)
    transport.writelines(data)
    return 0


# The app the last connection was made for, and its `fast_lane_of` (~10 us per connection)
LANE: list[Any] = [None, None]


class Sending:
    """A fast-lane answer whose file bytes the socket did not take at once, while the rest
    goes out as the socket drains. It stands in for uvicorn's cycle of the connection (the
    fields the protocol reads of one), so pipelined requests queue behind it and reading
    pauses, as behind any answer under way."""

    __slots__ = ("body", "disconnected", "keep_alive", "message_event", "more_body",
                 "response_complete", "task")

    def __init__(self) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = True  # False: the connection closes after it (shutdown, half-close)
        self.more_body = False
        self.body = b""
        self.message_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
