"""A fill shares the event loop: a large body already buffered is hashed and written in
pieces, with the other ready requests running in between (`fetch.YIELD_BYTES`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from edgeproxy.cache import create_app
from edgeproxy.cache.fetch import YIELD_BYTES
from edgeproxy.cache.transport import BeReq
from edgeproxy.config import load_config
from tests.servers import serve

PIECE = 64 * 1024
BODY = hashlib.shake_256(b"buffered").digest(4 * 1024 * 1024)


class BufferedTransport:
    """An upstream whose whole body is already buffered: its pieces come without a pause.
    A ticker in the node's loop counts the turns other work got while the body was taken."""

    def __init__(self) -> None:
        self.ticks = 0
        self.during: int | None = None
        self._ticker: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0)

    async def send(self, bereq: BeReq) -> BufferedTransport:
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        return self

    status = 200
    headers = [(b"cache-control", b"max-age=60"), (b"content-length", str(len(BODY)).encode())]

    async def aiter_body(self) -> AsyncIterator[bytes]:
        start = self.ticks
        for at in range(0, len(BODY), PIECE):
            yield BODY[at:at + PIECE]  # no await: as from a connection's buffer
            self.during = self.ticks - start  # (the taker stops once it has every byte)

    async def aclose(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()


def test_a_buffered_body_is_filled_in_pieces_between_other_work(tmp_path: Path) -> None:
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    transport = BufferedTransport()
    app = create_app(config.replace(content_classes=()), "edge", transport=transport)
    with serve(app) as edge:
        r = httpx.get(edge.url + "/big", timeout=30)
    assert r.status_code == 200 and r.content == BODY
    assert transport.during is not None
    # the other work ran about once per YIELD_BYTES (it ran not at all while the whole
    # 4 MiB were hashed and written in one go)
    assert transport.during >= len(BODY) // YIELD_BYTES // 2, transport.during
