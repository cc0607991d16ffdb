"""The ``deliver`` step (Varnish's ``cnt_deliver``): status, fields and body to the client,
from the sources the steps before it joined; slices not joined yet are joined as the body
gets to them."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ..errors import FillAborted, HTTPError
from . import joins, slicesums
from .deliver import checked_send, plan_reply, refuse_wrong_empty, send_body, with_content_digest
from .lanebodies import file_pieces
from .meta import whole_body_digest
from .sources import Source, StoredSource, Witness, small_body_ended
from .tx import Tx
from .types import ZEROCOPY

if TYPE_CHECKING:
    from .node import CacheNode

__all__ = ["deliver"]


async def deliver(node: CacheNode, tx: Tx) -> None:
    """Status, fields and body to the client, from the sources joined for them."""
    meta, req = tx.meta, tx.req
    assert meta is not None
    headers = node.response_headers(meta, tx)
    try:
        if meta.length == 0:
            refuse_wrong_empty(whole_body_digest(req.key, meta))
        reply = plan_reply(meta, req.headers, req.method, headers, req.ranges)
    except (HTTPError, FillAborted):
        await node.drop_direct(tx)
        raise
    flight = tx.flight
    reply = with_content_digest(reply, meta, req.key, req.method, flight)
    bodiless = req.method == "HEAD" or reply.status == 304
    ready = joins.attach(node, tx, meta, reply.ranges, bodiless)
    if not bodiless:
        await small_body_ended(ready, meta.length, node.wait_timeout)
        filling = {i for i, source in ready.items() if not isinstance(source, StoredSource)}
        reply = slicesums.with_stored(reply, meta, node.store, req.key, req.raw_headers,
                                      filling)
    await node.start_response(tx, reply.status, reply.headers)
    if bodiless:
        for source in ready.values():
            source.close()
        await node.drop_direct(tx)
        await tx.send({"type": "http.response.body", "body": b"", "more_body": False})
        return None
    zerocopy = ZEROCOPY in (tx.scope.get("extensions") or ())
    witness = Witness()
    send, checked = checked_send(node, req.key, meta, reply.ranges is None, flight, tx.send,
                                 witness)
    zerocopy = zerocopy and not checked  # every byte is hashed here: through memory

    async def join(index: int) -> Source:
        source = ready.pop(index, None)
        if source is None:
            source = await joins.join(node, tx, meta, index)
        witness.saw(index, source)
        return source

    # Runs of stored slices go as one zero-copy message each, as the lane sends them (slice
    # by slice, a 100 MiB hit cost twice its CPU); not where every byte is seen or held.
    pieces = None
    if zerocopy and send is tx.send and tx.direct is None and meta.length is not None \
            and meta.length > meta.slice_size:
        pieces = partial(file_pieces, node, req.key, meta)
    try:
        tx.sent = await send_body(reply, meta, send, join, direct=tx.direct,
                                  read_size=node.read_size, timeout=node.wait_timeout,
                                  zerocopy=zerocopy, pieces=pieces)
    finally:
        for source in ready.values():
            source.close()
        await node.drop_direct(tx)
    await tx.send({"type": "http.response.body", "body": b"", "more_body": False})
    return None
