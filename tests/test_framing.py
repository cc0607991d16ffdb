"""HTTP/1.1 message framing on both sides of the cache nodes (RFC 9112 §6): a request body that
never ends is never relayed as a whole one, and answers whose framing the cache cannot read
as their content are refused, not relayed or stored."""

from __future__ import annotations

import socket
import time

import pytest

from tests.chain import Chain
from tests.conftest import MakeChain
from tests.foreign import ForeignOrigin
from tests.rawhttp import raw_request
from tests.test_upstream_bodies import RawOrigin


def _arrived(foreign: ForeignOrigin, target: str, method: str, wait: float) -> int:
    """How many ``method target`` requests the origin read whole, within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not foreign.count(target, method):
        time.sleep(0.05)
    return foreign.count(target, method)


# A chunked body that never ends: the client closes after its first chunk, or breaks the
# framing after it (the server answers 400 and closes).
CUT_BODIES = {
    "closed": b"5\r\nhello\r\n",
    "broken": b"5\r\nhelloXX0\r\n\r\n",
    "bad size": b"5\r\nhello\r\n10000000000000005\r\nworld\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("tier", ["edge", "shield"])
@pytest.mark.parametrize("cut", list(CUT_BODIES), ids=list(CUT_BODIES))
def test_a_request_body_that_never_ends_never_reaches_the_origin_whole(
        foreign: ForeignOrigin, foreign_chain: Chain, tier: str, cut: str) -> None:
    """RFC 9112 §7.1: a chunked body is complete only with its last chunk. A relay that
    ends the body it forwards when its client's ends early hands the origin a short PUT as
    a whole one (it answered 200 and stored "hello")."""
    foreign.route("/up", "PUT", body=b"stored\n")
    url = foreign_chain.edge_url if tier == "edge" else foreign_chain.shield_url
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"PUT /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + CUT_BODIES[cut])
        time.sleep(0.3)  # the first chunk is relayed before the client goes
    assert _arrived(foreign, "/up", "PUT", 1.5) == 0, foreign.requests("/up", "PUT")
    # and the nodes' connections upstream still carry whole requests
    r = raw_request(url, b"PUT /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                         b"Connection: close\r\n\r\nwhole")
    assert r.status == 200 and r.body == b"stored\n"
    assert [q.body for q in foreign.requests("/up", "PUT")] == [b"whole"]


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Odd", b"HTTP/1.1 000 Odd",
                                         b"HTTP/1.1 101 Switching Protocols"])
def test_a_status_below_100_or_a_switch_nobody_asked_for_is_a_502(
        make_chain: MakeChain, status_line: bytes) -> None:
    """RFC 9110 §15: a status code is 100-599 (the nodes relay up to 999); llhttp reads any
    three digits. Found from outside: ``099`` raised inside the shield's server (no status
    line for it) and the connection closed unanswered; a ``101`` (Upgrade is hop-by-hop and
    never relayed, §7.8, so no request asks to switch) was relayed as a final answer, the
    client's connection said to speak another protocol from then on."""
    answer = status_line + b"\r\nUpgrade: websocket\r\nConnection: upgrade\r\n" \
        b"Content-Length: 2\r\n\r\nhi"
    raw = RawOrigin([[answer, None], [answer, None]])
    try:
        chain = make_chain(f"http://127.0.0.1:{raw.port}")
        for url in (chain.shield_url, chain.edge_url):
            r = raw_request(url, b"GET /odd HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert r.status == 502 and b"bad_upstream_answer" in r.body, (url, r)
    finally:
        raw.close()


@pytest.mark.parametrize("coding", ["chunked, identity", "chunked, chunked", "chunked, "])
def test_chunked_not_as_the_final_coding_is_refused_not_stored(
        foreign: ForeignOrigin, foreign_chain: Chain, coding: str) -> None:
    """RFC 9112 §6.3: with chunked not last, the body runs to the close and its bytes are
    still chunk-encoded (§6.1 forbids the form to a sender). Read as they came, they were
    served and stored as the content: ``5\\r\\nhello\\r\\n0\\r\\n\\r\\n`` for ``hello``, a HIT
    after. Refused like the other codings the client does not decode."""
    foreign.route("/te", body=b"5\r\nhello\r\n0\r\n\r\n", framing="close",
                  headers=[("Transfer-Encoding", coding), ("Cache-Control", "max-age=3600")])
    for _ in range(2):
        r = foreign_chain.get("/te")
        assert r.status_code == 502 and r.json()["error"] == "bad_upstream_answer", r.content
    assert foreign.count("/te") == 2  # nothing stored


@pytest.mark.parametrize("body", [
    b"ffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",  # a chunk size past 64 bits
    b"5\r\nhelloXX\r\n0\r\n\r\n",  # no CRLF after the chunk's data
], ids=["size-overflow", "bad-chunk-end"])
def test_an_answer_broken_in_the_reads_of_its_head_is_a_502_not_a_cut_200(
        make_chain: MakeChain, body: bytes) -> None:
    """The upstream client knew the answer was broken when its head was handed on (the
    broken chunk came in the same read): the client got a 200 and then a cut chunked body.
    Nothing of it had been relayed: a 502 says so. (A close that comes later still cuts
    the answer begun: that is the only way left to say it is not whole.)"""
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    raw = RawOrigin([[answer, None], [answer, None]])
    try:
        chain = make_chain(f"http://127.0.0.1:{raw.port}")
        for url in (chain.shield_url, chain.edge_url):
            r = raw_request(url, b"GET /cut HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert r.status == 502, (url, r)
    finally:
        raw.close()
