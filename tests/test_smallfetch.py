"""A cold whole GET of a small object fetches by itself (`edgeproxy.cache.smallfetch`): one
exchange, the slice settled (checked, stored) before anyone reads it, the answer from memory.
Pure rules by table; the rest over real sockets, an edge in front of the foreign origin."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.cache import smallfetch
from edgeproxy.cache.beresp import BeResp
from edgeproxy.cache.fetch import Fetcher
from edgeproxy.cache.req import Req
from edgeproxy.cache.tx import Tx
from edgeproxy.http import parse_range
from tests.chain import edge_config, serve_edge
from tests.foreign import ForeignOrigin
from tests.servers import ServerThread
from tests.test_cache_node import _metric

SLICE = 64 * 1024
FRESH = ("Cache-Control", "max-age=3600")


def _req(method: str = "GET", range_: str | None = None) -> Req:
    return Req(method=method, path="/o", query="", key="/o", headers={}, raw_headers=[],
               ranges=parse_range(range_))


def _tx(req: Req, **fields: Any) -> Tx:
    tx = Tx(req=req, scope={}, receive=None, send=None)  # type: ignore[arg-type]
    tx.absent = True
    for name, value in fields.items():
        setattr(tx, name, value)
    return tx


@pytest.mark.parametrize(("req", "fields", "private", "want"), [
    (_req(), {}, False, True),                              # a cold whole GET
    (_req("HEAD"), {}, False, False),                       # its facts only: the usual way
    (_req(range_="bytes=0-9"), {}, False, False),           # a range: slices the usual way
    (_req(), {}, True, False),                              # RFC 9111 §3.5: credentials
    (_req(), {"absent": False}, False, False),              # a variant is stored
    (_req(), {"stale": object()}, False, False),            # revalidation: the usual way
    (_req(), {"known": object()}, False, False),            # a partial object
    (_req(), {"whole": True}, False, False),                # learning a length
])
def test_eligible(req: Req, fields: dict[str, Any], private: bool, want: bool) -> None:
    assert smallfetch.eligible(req, _tx(req, **fields), private) is want


def _beresp(status: int = 200, length: int | None = 1000, body: int | None = 1000,
            start: int = 0) -> BeResp:
    return BeResp(status=status, headers=[], length=length, body_length=body, etag=None,
                  last_modified=None, content_type=None, request_time=0.0, response_time=0.0,
                  body_start=start)


@pytest.mark.parametrize(("beresp", "slice_size", "want"), [
    (_beresp(), SLICE, True),
    (_beresp(length=0, body=0), SLICE, True),                          # empty
    (_beresp(length=smallfetch.SMALL_MAX, body=smallfetch.SMALL_MAX), 2**20, True),
    (_beresp(length=smallfetch.SMALL_MAX + 1, body=smallfetch.SMALL_MAX + 1), 2**20, False),
    (_beresp(length=SLICE + 1, body=SLICE + 1), SLICE, False),          # past one slice
    (_beresp(length=2000, body=2000), 1024, False),                   # two slices
    (_beresp(length=None, body=None), SLICE, False),                  # chunked: unknown
    (_beresp(status=404), SLICE, False),                              # not a 200
    (_beresp(status=206, length=5000, body=1000), SLICE, False),      # part of it
])
def test_fits(beresp: BeResp, slice_size: int, want: bool) -> None:
    assert smallfetch.fits(beresp, slice_size) is want


# --- over real sockets ---


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the flights run in a task of their own (the usual way of a miss)."""
    keys: list[str] = []
    run = Fetcher.run

    def spy(self: Fetcher, flight: Any, spec: Any, answer: Any = None) -> None:
        keys.append(flight.key)
        run(self, flight, spec, answer)

    monkeypatch.setattr(Fetcher, "run", spy)
    return keys


@pytest.fixture
def edge(foreign: ForeignOrigin, tmp_path: Path) -> Iterator[ServerThread]:
    config = edge_config(tmp_path, foreign.url,
                         f"cache: {{slice_size: {SLICE}, fill_wait_timeout: 1s}}\n")
    with serve_edge(config) as server:
        yield server


def test_a_small_miss_is_one_exchange_without_a_flight_task(
        foreign: ForeignOrigin, edge: ServerThread, runs: list[str]) -> None:
    """The answer is read whole, stored and sent: a MISS, then a HIT, one origin request,
    and no flight ran in a task (it did, for every miss, before)."""
    foreign.route("/o", body=b"x" * 4096, headers=[FRESH])
    first = httpx.get(edge.url + "/o")
    second = httpx.get(edge.url + "/o")
    assert (first.status_code, first.content) == (200, b"x" * 4096)
    assert first.headers["x-cache"] == "MISS from edge-1"
    assert second.content == first.content and second.headers["x-cache"] == "HIT from edge-1"
    assert foreign.count("/o") == 1
    assert runs == []


def test_a_small_object_past_the_inline_bound_is_stored_as_a_file_in_one_go(
        foreign: ForeignOrigin, edge: ServerThread, runs: list[str]) -> None:
    """One slice of 50 KiB (past the 32 KiB kept in the index row): landed in its file and
    committed by the same fetch; the next request is a hit from that file."""
    body = bytes(range(256)) * 200
    foreign.route("/f", body=body, headers=[FRESH])
    assert httpx.get(edge.url + "/f").content == body
    again = httpx.get(edge.url + "/f")
    assert (again.content == body, again.headers["x-cache"]) == (True, "HIT from edge-1")
    assert foreign.count("/f") == 1 and runs == []


@pytest.mark.parametrize(("name", "route"), [
    ("two slices", {"body": b"y" * (SLICE + 1)}),
    ("chunked", {"body": b"z" * 3000, "framing": "chunked"}),
    ("not found", {"body": b"gone", "status": 404}),
])
def test_any_other_answer_is_handed_to_its_flight(foreign: ForeignOrigin, edge: ServerThread,
                                                  runs: list[str], name: str,
                                                  route: dict[str, Any]) -> None:
    """Larger than an inline slice, of unknown length, another status: the same flight runs
    on (no second request), and the answer is the usual one."""
    foreign.route("/h", headers=[FRESH], **route)
    resp = httpx.get(edge.url + "/h")
    assert (resp.status_code, resp.content) == (route.get("status", 200), route["body"])
    assert foreign.count("/h") == 1
    assert runs == ["/h"]


def test_requests_during_a_small_fetch_wait_for_it_and_find_it_stored(
        foreign: ForeignOrigin, edge: ServerThread) -> None:
    """Collapsed forwarding: eight requests at once for a slow small object, one upstream
    request, every answer whole and right."""
    body = bytes(range(256)) * 40
    foreign.route("/c", body=body, delay=0.4, headers=[FRESH])
    answers: list[httpx.Response] = []

    def get() -> None:
        answers.append(httpx.get(edge.url + "/c", timeout=20))

    threads = [threading.Thread(target=get) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [(a.status_code, a.content == body) for a in answers] == [(200, True)] * 8
    assert foreign.count("/c") == 1


def test_a_small_body_that_fails_its_address_is_refused_not_stored(
        foreign: ForeignOrigin, edge: ServerThread) -> None:
    """A content-addressed path whose answer has other bytes: a 502 before any byte of it,
    counted, nothing stored (the next request asks again)."""
    path = "/v/t1/" + hashlib.sha256(b"the right bytes").hexdigest()
    foreign.route(path, body=b"the wrong bytes", headers=[FRESH])
    for attempt in (1, 2):
        resp = httpx.get(edge.url + path)
        assert resp.status_code == 502 and resp.json()["error"]
        assert foreign.count(path) == attempt
    metrics = httpx.get(edge.url + "/metrics").text
    assert _metric(metrics, "edgeproxy_integrity_failures_total", reason="body_hash") == 2
    foreign.route(path, body=b"the right bytes", headers=[FRESH])
    assert httpx.get(edge.url + path).content == b"the right bytes"


def test_a_silent_upstream_is_a_504_for_the_leader_and_its_followers(
        foreign: ForeignOrigin, edge: ServerThread) -> None:
    """The answer's head does not come within the wait (``fill_wait_timeout``, 1 s here):
    504, for every request waiting on that fetch, in about that time."""
    foreign.route("/s", body=b"late", delay=5.0, headers=[FRESH])
    answers: list[httpx.Response] = []

    def get() -> None:
        answers.append(httpx.get(edge.url + "/s", timeout=20))

    started = time.monotonic()
    threads = [threading.Thread(target=get) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [504] * 3
    assert all(a.json()["error"] == "upstream_timeout" for a in answers)
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize(("method", "headers"), [
    ("GET", {}),                        # a small fetch
    ("GET", {"Range": "bytes=0-99"}),   # the usual way (it was a 416 for bytes */0)
    ("HEAD", {}),
])
def test_an_empty_body_under_an_address_of_other_bytes_is_refused(
        foreign: ForeignOrigin, edge: ServerThread, method: str, headers: dict[str, str]) -> None:
    """An empty 200 for a content-addressed path has no last byte to hold back: it was sent
    as a complete, empty object. Refused before its head (502), never stored."""
    path = "/v/t1/" + hashlib.sha256(b"x" * 1000).hexdigest()
    foreign.route(path, body=b"", etag='"e"', headers=[FRESH])
    for attempt in (1, 2):
        resp = httpx.request(method, edge.url + path, headers=headers)
        assert resp.status_code == 502
        assert foreign.count(path, method=None) == attempt


def test_a_cold_get_while_slice_0_fills_for_a_range_waits_for_that_fill(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """Slice 0 is being filled here by a range's flight (no facts of its own), and the object's
    facts are purged meanwhile: a whole GET finds nothing stored and cannot claim slice 0.
    It waits for that fill and looks again (it spun in a loop of steps that never awaited,
    and the worker served nothing more, found in the suite under eviction churn)."""
    body = bytes(range(256)) * 512  # two slices of 64 KiB
    foreign.route("/r", body=body, etag='"r"', headers=[FRESH])
    config = edge_config(tmp_path, foreign.url,
                         f"cache: {{slice_size: {SLICE}}}\nadmin_token: {'t' * 24}\n")
    with serve_edge(config) as edge:
        later = f"bytes={SLICE + 1}-{SLICE + 10}"  # facts and slice 1 stored, not slice 0
        assert httpx.get(edge.url + "/r", headers={"Range": later}).status_code == 206
        foreign.route("/r", body=body, etag='"r"', headers=[FRESH], delay=1.0)
        answers: dict[str, httpx.Response] = {}

        def ranged() -> None:  # leads a flight for slice 0 of the known object
            answers["range"] = httpx.get(edge.url + "/r", headers={"Range": "bytes=0-9"},
                                         timeout=20)

        thread = threading.Thread(target=ranged)
        thread.start()
        time.sleep(0.3)
        purged = httpx.post(edge.url + "/_admin/purge", json={"paths": ["/r"]},
                            headers={"authorization": f"Bearer {'t' * 24}"})
        assert purged.status_code == 200
        whole = httpx.get(edge.url + "/r", timeout=10)
        thread.join()
        assert (whole.status_code, whole.content == body) == (200, True)
        assert answers["range"].content == body[:10]


async def test_steps_that_would_not_end_fail_the_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that leads back to itself without awaiting anything held the worker's loop
    forever (the loop above): `steps.run` stops after `MAX_STEPS` and fails the request."""
    from types import SimpleNamespace

    from edgeproxy.cache import steps

    taken: list[int] = []

    async def again(node: Any, tx: Any) -> Any:
        taken.append(1)
        return again

    monkeypatch.setattr(steps, "recv", again)
    with pytest.raises(RuntimeError, match="did not end"):
        await steps.run(None, SimpleNamespace(req=SimpleNamespace(key="/k")))  # type: ignore[arg-type]
    assert len(taken) == steps.MAX_STEPS
