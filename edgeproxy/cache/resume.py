"""The rest of a slice an upstream answered only in part, asked for again within one flight.

An upstream may answer a range with fewer bytes than asked (RFC 9110 §15.3.7: its 206 says
which with Content-Range); a few origins cap every range at a few hundred KiB. The slices such
an answer holds whole are stored and the rest is joined anew (`Fetcher._claim_body`); a slice
it holds only part of is finished by the same flight, with a request for the bytes still
missing and ``If-Range`` naming the representation (§13.1.5), so no byte of another version is
spliced in: a changed object answers 200, and the flight fails rather than mix the two.
"""

from __future__ import annotations

import hashlib

from ..errors import UpstreamProtocolError
from . import policy
from .beresp import BeResp
from .facts import FactsContradicted, contradiction, variant_version
from .flight import Flight, FlightSpec
from .transport import BeReq

# Requests one flight may add for the rest of its slices (each must bring bytes): an origin
# that caps ranges at 16 KiB finishes a 1 MiB slice in 64.
MAX_CONTINUATIONS = 256


def rest(flight: Flight, beresp: BeResp, received: int, size: int) -> tuple[int, int] | None:
    """The bytes (first, last) the flight still needs after ``beresp``'s body ended, when
    it was a 206 that carried all it said and a validator ties a next answer to it; None
    when nothing is missing, or nothing may be asked for."""
    meta = flight.meta
    # (a varying object's flight fills its variant's version: compared with the answer's own,
    # never equal, no rest was asked for and every range was cut after its head)
    version = beresp.version if meta is None else \
        variant_version(beresp.version, meta.vary, meta.vary_values)
    if beresp.status != 206 or beresp.length is None or received != beresp.body_length \
            or beresp.if_range is None or flight.version is None or flight.version != version:
        return None
    open_fills = [i for i, f in flight.fills.items() if not f.done and f.error is None]
    if not open_fills:
        return None
    first = beresp.body_start + received
    last = min(beresp.length, (max(open_fills) + 1) * size) - 1
    return (first, last) if first <= last else None


def cut_short(flight: Flight, beresp: BeResp, size: int) -> int | None:
    """Where a 206 from the first byte the flight asked for ends, when that is short of what
    it asked for (RFC 9110 §15.3.7: its Content-Range says which); None otherwise."""
    if beresp.status != 206 or beresp.length is None or beresp.body_length is None \
            or beresp.body_start != flight.first * size:
        return None
    end = beresp.body_start + beresp.body_length
    asked = beresp.length if flight.last is None else \
        min(beresp.length, (flight.last + 1) * size)
    return end if end < asked else None


def whole_instead(flight: Flight, beresp: BeResp, size: int) -> bool:
    """Whether ``beresp`` is a 206 that holds not even the first slice asked for whole, with
    no validator to ask for the rest of it with: its bytes can never be joined to another
    answer's (RFC 9111 §3.4), so the flight asks for the object whole instead, in one
    unconditional request (an origin that caps ranges and sends no ETag or Last-Modified
    was answered 502)."""
    end = cut_short(flight, beresp, size)
    return end is not None and beresp.if_range is None and beresp.length is not None \
        and policy.last_whole_slice(beresp.body_start, end, beresp.length, size) is None


def bereq(spec: FlightSpec, span: tuple[int, int], before: BeResp) -> BeReq:
    """The request for the bytes of ``span``, if the representation is still ``before``'s
    (a ``span`` from `rest`, which asks for none without a validator)."""
    validator = before.if_range
    if validator is None:
        raise UpstreamProtocolError("no validator to ask for the rest of a range with")
    headers = [*spec.headers, (b"range", f"bytes={span[0]}-{span[1]}".encode()),
               (b"if-range", validator.encode("latin-1"))]
    return BeReq("GET", spec.target, headers, spec.key)


def check(answer: BeResp, span: tuple[int, int], before: BeResp) -> None:
    """Raise unless ``answer`` carries bytes of ``before``'s representation from ``span``'s
    first byte on (a 200 says the object changed; anything else is no answer to this)."""
    why = contradiction(before.length, span[0], answer.status, answer.length,
                        answer.version == before.version)
    if why is not None:
        raise FactsContradicted(f"the rest of a range: {why}")
    if answer.status != 206:
        raise UpstreamProtocolError(
            f"upstream answered the rest of a range with {answer.status}, not 206 (the object "
            "changed, or If-Range was not honoured)")
    if answer.body_start != span[0] or answer.length != before.length or not answer.body_length \
            or answer.version != before.version:
        raise UpstreamProtocolError("upstream answered the rest of a range with other bytes")


def checks_for(flight: Flight, answer: BeResp, size: int) -> None:
    """What ``answer``'s own body must hash to (its Content-Digest covers its bytes only,
    RFC 9530 §2), and which fill holds its last byte until that is known."""
    digest = answer.content_digest
    flight.checks, _ = policy.body_checks(digest[2] if digest is not None else None, None,
                                          answer.body_start, answer.body_length, answer.length)
    flight.hasher = hashlib.sha256() if flight.checks else None
    flight.whole = False
    assert answer.body_length is not None
    last = (answer.body_start + answer.body_length - 1) // size
    for index, fill in flight.fills.items():
        fill.hold_last = flight.hasher is not None and index == last
