"""The ASGI ``send`` of one uvicorn HTTP/1.1 cycle on edgeproxy's server protocol: ASGI's
messages, and the two kinds the server offers besides (`edgeproxy.zerocopy` does the sending):
file bytes by ``sendfile`` (``http.response.zerocopysend``, a run of stored slices' pieces)
and interim answers (`INFORMATIONAL`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .cache.slicefiles import FilePiece
from .cache.types import INFORMATIONAL, ZEROCOPY, Message
from .zerocopy import send_file, send_rest, write_piece

__all__ = ["ZeroCopySend"]

_REASONS = {100: b"Continue", 102: b"Processing", 103: b"Early Hints"}


class ZeroCopySend:
    """An ASGI ``send`` for uvicorn's HTTP/1.1 cycle that also takes zero-copy messages
    (``file`` with a ``fileno()`` or a descriptor, ``offset``, ``count``, ``more_body``) and
    interim answers (``status``, ``headers``: `INFORMATIONAL`). A client that takes no byte
    for ``timeout`` seconds is cut off. ``on_start`` is called as the answer's head goes to
    the server (once)."""

    __slots__ = ("cycle", "on_start", "send", "timeout")

    def __init__(self, cycle: Any, send: Any, timeout: float,
                 on_start: Callable[[], None] | None = None) -> None:
        self.cycle = cycle
        self.send = send
        self.timeout = timeout
        self.on_start = on_start

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind != ZEROCOPY:
            if kind == INFORMATIONAL:
                self._informational(message)
                return
            on_start = self.on_start
            if on_start is not None and kind == "http.response.start":
                self.on_start = None
                on_start()
            await self.send(message)
            return
        cycle = self.cycle
        piece = message.get("piece")
        if cycle.disconnected or not cycle.response_started or cycle.response_complete:
            if piece is not None:
                piece.close()  # (its files' descriptors are let go now, not at collection)
            if cycle.disconnected:
                return
            raise RuntimeError(f"unexpected ASGI message {ZEROCOPY!r}")
        if piece is not None:
            await self._send_piece(cycle, piece, bool(message.get("more_body", False)))
            return
        file = message["file"]
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        if offset is None:
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        count = message.get("count")
        if count is None:
            count = os.fstat(fd).st_size - offset
        more = bool(message.get("more_body", False))
        if cycle.scope["method"] == "HEAD" or count <= 0:
            await self.send({"type": "http.response.body", "body": b"", "more_body": more})
            return
        transport = cycle.transport
        flush = getattr(transport, "flush", None)
        if flush is not None:
            flush()  # a head held for the first body bytes goes now
        real = getattr(transport, "real", transport)
        if cycle.chunked_encoding:
            real.write(b"%x\r\n" % count)
        elif count > cycle.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        else:
            cycle.expected_content_length -= count
        if not await send_file(real, fd, offset, count, self.timeout,
                               message.get("unchanged")):
            return
        if cycle.chunked_encoding:
            real.write(b"\r\n")
        if not more:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _send_piece(self, cycle: Any, piece: FilePiece, more: bool) -> None:
        """Stored slices' bytes as one run (`write_piece`, then `send_rest`); the pieces are
        closed once sent (or the connection aborted on a file found changed)."""
        count = len(piece)
        if cycle.scope["method"] == "HEAD" or count <= 0:
            piece.close()
            await self.send({"type": "http.response.body", "body": b"", "more_body": more})
            return
        if not cycle.chunked_encoding and count > cycle.expected_content_length:
            piece.close()
            raise RuntimeError("Response content longer than Content-Length")
        if not cycle.chunked_encoding:
            cycle.expected_content_length -= count
        transport = cycle.transport
        flush = getattr(transport, "flush", None)
        if flush is not None:
            flush()  # a head held for the first body bytes goes now
        real = getattr(transport, "real", transport)
        rest = write_piece(real, b"%x\r\n" % count if cycle.chunked_encoding else b"", piece)
        if real.is_closing():  # gone, or cut short on a changed file: never complete
            piece.close()  # (closed already unless bytes were left)
            return
        if rest and not await send_rest(real, piece, rest, self.timeout):
            return
        if cycle.chunked_encoding:
            real.write(b"\r\n")
        if not more:
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})

    def _informational(self, message: Message) -> None:
        """An interim answer, written ahead of the final one (not once that has begun)."""
        cycle = self.cycle
        status = int(message["status"])
        if cycle.disconnected or cycle.response_started or not 100 <= status < 200 \
                or status == 101:
            return
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Informational"))]
        lines += [b"%s: %s\r\n" % (name, value) for name, value in message.get("headers", ())]
        getattr(cycle.transport, "real", cycle.transport).write(b"".join(lines) + b"\r\n")
