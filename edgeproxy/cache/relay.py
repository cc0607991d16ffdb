"""The ``pass`` step: a request relayed to the upstream and its answer relayed back, both
streamed, nothing looked up or stored (Varnish's ``vcl_pass``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from . import asgi, fields
from .beresp import interims_of
from .transport import BeReq
from .tx import Tx
from .verdict import Verdict, x_cache

if TYPE_CHECKING:
    from .node import CacheNode

__all__ = ["pass_"]


async def pass_(node: CacheNode, tx: Tx) -> None:
    """Relay the request and its answer, both streamed; unsafe methods that succeed
    invalidate what is stored (RFC 9111 §4.4)."""
    req = tx.req
    has_body = any(n in (b"content-length", b"transfer-encoding") for n, _ in req.raw_headers)
    body = asgi.request_body(tx.receive) if has_body else None
    started = time.perf_counter()
    # (a Range this node ignores on a GET is not its upstream's to honour either)
    ranged = req.ranges is not None or req.method not in ("GET", "HEAD")
    resp = await node.transport.send(BeReq(req.method, req.target, fields.pass_headers(
        req.raw_headers, node.name, ranges=ranged), req.key, body))
    tx.upstream_time += time.perf_counter() - started
    try:
        hmap: dict[str, str] = {}
        for n, v in resp.headers:
            hmap.setdefault(n.decode("latin-1"), v.decode("latin-1"))
        if fields.invalidates(req.method, resp.status):
            host = req.headers.get("host")
            node.invalidate(fields.invalidated_paths(req.target, host, hmap))
        out = fields.forwardable((n.decode("latin-1"), v.decode("latin-1"))
                                 for n, v in resp.headers)
        out = [(n, v) for n, v in out if n not in ("x-cache", "via", "content-length")]
        out.append(("via", fields.via(hmap.get("via"), node.name)))
        out.append(("x-cache", x_cache(Verdict.PASS, node.name, hmap.get("x-cache"))))
        if "content-length" in hmap and "transfer-encoding" not in hmap:
            out.append(("content-length", hmap["content-length"]))
        tx.verdict = Verdict.PASS
        tx.interims = interims_of(resp)
        await node.start_response(tx, resp.status, out)
        async for chunk in resp.aiter_body():
            tx.sent += len(chunk)
            if req.method != "HEAD":
                await tx.send({"type": "http.response.body", "body": chunk, "more_body": True})
        await tx.send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        await resp.aclose()
    return None
