"""A cold whole GET whose answer is small: fetched, stored and delivered in one go.

Most misses are of small objects (thumbnails, small media), and a miss through the general
way costs a task of its own for the flight, a wait for its headers, a join of the slice being
filled and a follow of that fill. Here the request that leads the flight sends it itself; an
answer of one slice (a 200 of known length up to `SMALL_MAX`) is read whole, landed in
its fill and settled as any flight's is (the slice sums, the SHA-256 checks, the commit, a
file for a slice past the inline bound: `fetch.Fetcher` and `commits.Commits` do it,
synchronously), then delivered from memory.
Requests that joined the flight meanwhile wait for its headers, set only once the slice is
settled, and find it stored. Any other answer (larger, of unknown length, another status) is
handed to a run of the same flight, and the request goes on as a miss's leader.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..errors import FillAborted, UpstreamTimeout
from .beresp import BeResp
from .fetch import Fetcher
from .flight import Flight, FlightSpec
from .transport import UpstreamResponse

if TYPE_CHECKING:
    from .req import Req
    from .tx import Tx

__all__ = ["SMALL_MAX", "eligible", "fetch", "fits"]

# The largest body taken whole before delivery: most small objects (thumbnails, the Zipf mix's
# 1-128 KiB), and little for a client to wait for before its first byte (the rest stream).
SMALL_MAX = 128 * 1024


def eligible(req: Req, tx: Tx, private: bool) -> bool:
    """Whether a miss may fetch by itself: a GET of the whole object, which the lookup found
    nothing of (no stale copy, no partial one), without credentials (RFC 9111 §3.5: those
    lead flights others may not join)."""
    return req.method == "GET" and not req.ranges and not private and tx.absent \
        and tx.stale is None and tx.known is None and not tx.whole


def fits(beresp: BeResp, slice_size: int) -> bool:
    """Whether an answer is small enough to take whole before delivery: a 200 carrying all of
    a representation of known length, no larger than `SMALL_MAX` and one slice."""
    return beresp.status == 200 and beresp.length is not None \
        and beresp.length <= min(SMALL_MAX, slice_size) \
        and beresp.body_start == 0 and beresp.body_length == beresp.length


async def fetch(fetcher: Fetcher, flight: Flight, spec: FlightSpec,
                wait: float) -> tuple[BeResp, bytes] | None:
    """Send ``flight``'s request (its first slice claimed). A small answer is read whole, its
    fill settled and the flight ended: (its `BeResp`, its body). Any other answer is handed
    to a run of the flight (None). A failure fails the flight and is raised; so is an answer
    not in within ``wait`` seconds (as a miss waits for its flight's: `UpstreamTimeout`)."""
    resp: UpstreamResponse | None = None
    handed = False
    try:
        async with asyncio.timeout(wait):
            resp, beresp = await fetcher.send(flight, spec)
            if not fits(beresp, spec.slice_size):
                fetcher.run(flight, spec, (resp, beresp))
                handed = True
                return None
            body = await _read(resp, beresp.body_length or 0)
        _settle(fetcher, flight, spec, beresp, body)
        flight.headers.set_result(beresp)
        fetcher.on_upstream(beresp.status, len(body))
        return beresp, body
    except BaseException as exc:  # incl. cancellation: the flight's followers must hear of it
        fetcher.failed(flight, exc)
        if isinstance(exc, TimeoutError):
            raise UpstreamTimeout(f"no answer from upstream in {wait:.0f}s") from None
        raise
    finally:
        if not handed:
            if resp is not None:
                await resp.aclose()
            fetcher.ended(flight)


def _settle(fetcher: Fetcher, flight: Flight, spec: FlightSpec, beresp: BeResp,
            body: bytes) -> None:
    """Decide the answer's fate and settle its fill as a flight's run would (stored once its
    checks pass, or dropped): synchronously, so that no request finds it half done."""
    plan = fetcher.on_headers(flight, beresp)
    flight.meta = plan.meta
    flight.content_digest = beresp.content_digest
    if plan.kind != "store":  # not to be stored (nor shared): only this request's answer
        fetcher.commits.drop_fills(flight, None)
        flight.shareable = False
        return
    flight.version = plan.meta.version
    flight.digest = plan.digest
    fetcher.plan_fills(flight, beresp, plan, spec.slice_size)
    fill = flight.fills.get(0)
    if fill is not None and not fill.done and fill.error is None and body:
        pieces = fetcher.landing.place(flight, 0, body, spec.slice_size, beresp.length)
        fetcher.landing.settle(flight, body, pieces, spec.slice_size)
    if flight.hasher is not None:
        fetcher.commits.vouch(flight, spec.slice_size)
    if fill is not None and fill.error is not None:
        raise FillAborted(f"fill failed: {fill.error}")


async def _read(resp: UpstreamResponse, length: int) -> bytes:
    """The whole body of a small answer, which must be ``length`` bytes."""
    chunks = [chunk async for chunk in resp.aiter_body()]
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    if len(body) != length:
        raise FillAborted(f"upstream body ended early at byte {len(body)} of {length}")
    return body
