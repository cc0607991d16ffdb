"""Holding a response's head for its first body bytes: one send for a small answer."""

from __future__ import annotations

import asyncio
from typing import Any

# A head and a body up to this size are joined into one buffer; larger bodies go by writev.
JOIN_MAX = 64 * 1024


class HeadHolder:
    """A response's transport that holds its first write (the head) for one loop turn.

    uvicorn writes the head at ``http.response.start`` and each body piece at once; joined,
    they are one system call. A head is held until the next write or close (which then
    carry it in front) or until the loop turns once, so a body that takes time to come
    never delays the head by more than that. Writes stay in order.
    """

    __slots__ = ("held", "loop", "real", "started")

    def __init__(self, real: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.real = real
        self.held: bytes | None = None
        self.loop = loop
        self.started = False

    def write(self, data: bytes) -> None:
        """Hold the first write; send a held one in front of the next."""
        held = self.held
        if held is not None:
            self.held = None
            if len(data) <= JOIN_MAX:
                self.real.write(held + data)
            else:  # no copy of a large body: one writev
                self.real.writelines((held, data))
        elif data and not self.started:
            self.started = True
            self.held = data
            self.loop.call_soon(self.flush)
        else:
            self.real.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        held = self.held
        if held is not None:
            self.held = None
            self.real.write(held)

    def close(self) -> None:
        """Close after what is held."""
        self.flush()
        self.real.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)
