"""Only strong validators tie an object's slices together, over real sockets: edge → shield in
front of the scriptable foreign origin.

A cache that stores an object slice by slice combines bytes of several upstream answers, which
RFC 9111 §3.4 allows only when a strong validator says they are of one representation. A
weak ETag never does, and a Last-Modified does only when the response's Date is at least a
second later (RFC 9110 §8.8.2.2) and there is no entity tag at all (§13.1.5). Anything else
must come from one answer. Found by an outside fuzzing run: a body of two versions served
whole, and an object with a weak ETag that could no longer be served complete.
"""

from __future__ import annotations

import os
import socket
import time
from email.utils import formatdate
from typing import Any

import pytest

from tests.chain import Chain
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin

N = 400_000  # bytes: seven 64 KiB slices
SLICE = 64 * 1024


def _slices(make_chain: MakeChain, foreign: ForeignOrigin) -> Chain:
    return make_chain(foreign.url, slice_size=SLICE)


def test_a_date_within_its_own_second_ties_no_slices(foreign: ForeignOrigin,
                                                       make_chain: MakeChain) -> None:
    """RFC 9110 §8.8.2.2 and §13.1.5, RFC 9111 §3.4: an object whose Last-Modified is its
    Date's own second changes within that second. No If-Range with that date is ever sent,
    and no answer splices the old bytes with the new: it is the new object, whole."""
    chain = _slices(make_chain, foreign)
    stamp = time.time() - 100
    fields: dict[str, Any] = {
        "last_modified": stamp,
        "headers": [("Date", formatdate(stamp, usegmt=True)), ("Cache-Control", "max-age=3600")],
    }
    foreign.route("/lm", body=b"A" * N, **fields)
    first = chain.get("/lm", headers={"Range": "bytes=0-9"})
    assert (first.status_code, first.content) == (206, b"A" * 10)
    foreign.route("/lm", body=b"B" * N, **fields)  # changed: same date, same Date
    later = chain.get("/lm", headers={"Range": "bytes=200000-200009"})
    assert (later.status_code, later.content) == (206, b"B" * 10)
    whole = chain.get("/lm")
    assert whole.status_code == 200
    assert whole.content == b"B" * N
    assert not [r for r in foreign.requests("/lm") if r.header("if-range")]


def test_a_strong_date_still_fetches_missing_slices_with_if_range(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """The same object with a Date a minute after its Last-Modified: the date is a strong
    validator (§8.8.2.2), so a missing slice is fetched alone, with If-Range (one request)."""
    chain = _slices(make_chain, foreign)
    stamp = time.time() - 100
    foreign.route("/lm", body=b"A" * N, last_modified=stamp,
                  headers=[("Date", formatdate(stamp + 60, usegmt=True)),
                           ("Cache-Control", "max-age=3600")])
    assert chain.get("/lm", headers={"Range": "bytes=0-9"}).content == b"A" * 10
    later = chain.get("/lm", headers={"Range": "bytes=200000-200009"})
    assert (later.status_code, later.content) == (206, b"A" * 10)
    asked = foreign.requests("/lm")[-1]
    assert asked.header("if-range") == formatdate(stamp, usegmt=True)
    assert asked.header("range") is not None


def test_a_date_beside_a_weak_etag_is_no_if_range(foreign: ForeignOrigin,
                                                   make_chain: MakeChain) -> None:
    """§13.1.5: a client that has an entity tag must not send a date in If-Range; a weak one
    is no validator for ranges either. The changed object is answered whole and right."""
    chain = _slices(make_chain, foreign)
    stamp = time.time() - 1000
    fields: dict[str, Any] = {"etag": 'W/"v"', "last_modified": stamp,
              "headers": [("Cache-Control", "max-age=3600")]}
    foreign.route("/wd", body=b"A" * N, **fields)
    assert chain.get("/wd", headers={"Range": "bytes=0-9"}).content == b"A" * 10
    foreign.route("/wd", body=b"B" * N, **fields)
    assert chain.get("/wd").content == b"B" * N
    assert not [r for r in foreign.requests("/wd") if r.header("if-range")]


def test_a_changed_object_under_one_weak_etag_is_served_whole(foreign: ForeignOrigin,
                                                               make_chain: MakeChain) -> None:
    """An object revalidated every time (max-age=0) under a weak ETag the origin keeps when
    the bytes change (a weak match answers 304: RFC 9110 §13.1.2 allows it). The 304 says
    nothing of the slices not stored: every whole answer is the new object, complete."""
    chain = _slices(make_chain, foreign)
    fields: dict[str, Any] = {"etag": 'W/"same"', "headers": [("Cache-Control", "max-age=0")]}
    foreign.route("/weak", body=b"A" * N, **fields)
    assert chain.get("/weak", headers={"Range": "bytes=0-9"}).content == b"A" * 10
    foreign.route("/weak", body=b"B" * N, **fields)
    for _ in range(3):
        whole = chain.get("/weak")
        assert whole.status_code == 200
        assert whole.content == b"B" * N


@pytest.mark.parametrize("etag", ['W/"w1"', None])
def test_a_failing_if_range_on_a_cold_object_without_validator_is_served_whole(
        foreign: ForeignOrigin, make_chain: MakeChain, etag: str | None) -> None:
    """RFC 9110 §13.1.5: an If-Range that does not match asks for the whole. On a cold object
    of two slices with no strong validator, the range's flight brings slice 0 only, and no
    answer may join another's bytes to it: the whole comes from one answer of its own, and
    every answer is complete (each was cut after slice 0, never stored whole)."""
    chain = _slices(make_chain, foreign)
    body = os.urandom(2 * SLICE)
    foreign.route("/ir", body=body, etag=etag, headers=[("Cache-Control", "max-age=3600")])
    for _ in range(3):
        whole = chain.get("/ir", headers={"Range": "bytes=6290-26582", "If-Range": '"zz"'})
        assert (whole.status_code, whole.content) == (200, body)


def test_a_failing_if_range_on_an_unstored_object_is_served_whole(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """§13.1.5 on an object that is not stored (private): the fill's range answer, relayed
    to this request alone, cannot answer the whole a failing If-Range asks for; the request
    is relayed as sent (the answer was a 200 cut where the range's body ended)."""
    chain = _slices(make_chain, foreign)
    body = os.urandom(300_001)
    stamp = time.time() - 100
    foreign.route("/priv", body=body, etag='"p"', last_modified=stamp,
                  headers=[("Cache-Control", "private, max-age=60")])
    for _ in range(2):
        whole = chain.get("/priv", headers={"Range": "bytes=179310-287483",
                                            "If-Range": formatdate(stamp - 5000, usegmt=True)})
        assert (whole.status_code, whole.content) == (200, body)
    ranged = chain.get("/priv", headers={"Range": "bytes=179310-287483", "If-Range": '"p"'})
    assert (ranged.status_code, ranged.content) == (206, body[179310:287484])


def test_sequential_requests_for_a_stale_object_lead_rather_than_pass(
        foreign: ForeignOrigin, make_chain: MakeChain) -> None:
    """One request at a time for an object always stale (no-cache), through nodes of two
    workers: a request that finds the other worker's claim on the object waits for facts
    newer than its stale copy (or the claim's end), then revalidates; it is never relayed
    as a PASS (which would send the client's own fields upstream), and the origin sees one
    conditional request per client request."""
    # (no access log: requests follow each other as fast as the benchmarks' do)
    chain = make_chain(foreign.url, "process", workers=2, access_log=False)
    body = os.urandom(100_000)
    foreign.route("/s", body=body, etag='"p1"', headers=[("Cache-Control", "no-cache")])
    port = int(chain.edge_url.rpartition(":")[2])
    verdicts = []
    for _ in range(30):  # a connection each, so that either worker takes it
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: sock.recv(1 << 20), b""))
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and content == body
        verdicts += [line for line in head.decode().split("\r\n")
                     if line.lower().startswith("x-cache:")]
    assert len(verdicts) == 30
    assert not [v for v in verdicts if "PASS" in v], verdicts
    assert foreign.count("/s") <= 30


def test_a_suffix_range_of_an_empty_object_is_answered_whole(foreign: ForeignOrigin,
                                                             foreign_chain: Chain) -> None:
    """RFC 9110 §14.1.1: a non-zero suffix is satisfiable on a zero-length representation;
    no range of it can be named, so the answer is the whole, empty, with 200 (cold and
    stored alike). Any other range of it is unsatisfiable: 416."""
    foreign.route("/empty", body=b"", headers=[("Cache-Control", "max-age=3600")])
    for _ in range(2):
        resp = foreign_chain.get("/empty", headers={"Range": "bytes=-5"})
        assert (resp.status_code, resp.content) == (200, b"")
    assert foreign_chain.get("/empty", headers={"Range": "bytes=0-0"}).status_code == 416
