"""The origin under hostile input and its digests, over real sockets through the same app and
uvicorn protocol `edgeproxy run` uses (the request guard in front).

- Every GET carries an RFC 9530 ``Content-Digest`` of exactly the bytes sent: on a 206 the
  digest of the partial content, on a 200 the same as ``Repr-Digest``.
- Range headers with thousands of digits, a megabyte long or with too many parts, numeric
  headers with thousands of digits, and bad targets get a 4xx or are ignored: never a 5xx.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from edgeproxy.config import load_config
from edgeproxy.guard import uvicorn_http_options
from edgeproxy.server import create_node_app
from tests.rawhttp import get, raw_request
from tests.servers import serve
from tests.test_origin import Clock, Origin, make_blob, sha


@dataclass
class Served:
    """A guarded origin on a loopback port and one committed blob."""

    origin: Origin
    blob: bytes

    @property
    def url(self) -> str:
        return self.origin.url

    @property
    def path(self) -> str:
        return f"/v/t1/{sha(self.blob)}"

    @property
    def etag(self) -> str:
        return f'"{sha(self.blob)}"'


@contextmanager
def guarded_origin(data_dir: Path, blob: bytes) -> Iterator[Served]:
    """The origin as `edgeproxy run` serves it (guard, httptools protocol), holding ``blob``."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(data_dir)})
    app = create_node_app(config, "origin")
    with serve(app, **uvicorn_http_options(config.http_limits)) as srv, \
            httpx.Client(base_url=srv.url, timeout=10) as http:  # fmt: skip
        origin = Origin(srv.url, http, config, Clock())
        http.headers.update(origin.auth("alice"))
        origin.upload(blob)
        yield Served(origin, blob)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with guarded_origin(tmp_path_factory.mktemp("origin"), make_blob(4000)) as s:
        yield s


def digest(data: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(data).digest()).decode()}:"


@pytest.mark.parametrize(("rng", "start", "end"), [
    ("bytes=0-0", 0, 0), ("bytes=100-299", 100, 299), ("bytes=-10", None, None),
    ("bytes=5000-", 5000, None), ("bytes=0-", 0, None), ("bytes=10-19,15-40", 10, 40),
])  # fmt: skip
def test_every_206_carries_the_digest_of_its_content(
        served: Served, rng: str, start: int | None, end: int | None) -> None:  # fmt: skip
    """RFC 9530 §2: Content-Digest covers the content of this message, the partial bytes."""
    blob = served.blob
    expected = blob[-10:] if start is None else blob[start : (end + 1 if end is not None else None)]
    r = served.origin.http.get(served.path, headers={"Range": rng})
    assert r.status_code == 206 and r.content == expected
    assert r.headers["content-digest"] == digest(expected)
    assert r.headers["repr-digest"] == digest(blob)  # §3: the whole representation's


def test_a_200_carries_content_and_repr_digest(served: Served) -> None:
    r = served.origin.http.get(served.path)
    assert r.status_code == 200 and r.content == served.blob
    assert r.headers["content-digest"] == r.headers["repr-digest"] == digest(served.blob)
    r = served.origin.http.get(served.path, headers={"Range": "bytes=0-0,100-100"})  # whole
    assert r.status_code == 200 and r.headers["content-digest"] == digest(served.blob)


HUGE = "9" * 4301  # more digits than int() converts


@pytest.mark.parametrize(("rng", "status"), [
    (f"bytes={HUGE}-", 200),                  # over MAX_RANGE_HEADER: ignored (§14.2)
    (f"bytes=0-{HUGE}", 200),
    (f"bytes={'9' * 500}-", 416),             # a first-byte-pos past the end (§14.1.1)
    (f"bytes=0-{'9' * 500}", 206),            # a last-byte-pos past the end is clipped
    (f"bytes=-{'9' * 500}", 206),             # a suffix longer than the blob: all of it
    ("bytes=0-0," * 20, 200),                 # more than MAX_RANGES: ignored
    ("bytes=" + "1" * 1_000_000 + "-", 431),  # a 1 MB header: refused by the head limits
])  # fmt: skip
def test_hostile_ranges(served: Served, rng: str, status: int) -> None:
    r = raw_request(served.url, get(served.path.encode(), f"Range: {rng}".encode()))
    assert r.status == status, r.body[:200]
    if status == 206:
        assert r.body == served.blob
    if status == 200:
        assert r.body == served.blob


def test_hostile_ranges_without_the_head_limits(tmp_path: Path) -> None:
    """The Range parser itself copes with what the guard would stop earlier: a 1 MB header and
    a 100,000-digit position, sent to the bare origin app (no guard, h11 with a big buffer)."""
    from edgeproxy.origin import create_app

    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    blob = make_blob(10)
    with serve(create_app(config), h11_max_incomplete_event_size=4 * 1024 * 1024) as srv, \
            httpx.Client(base_url=srv.url, timeout=10) as http:  # fmt: skip
        origin = Origin(srv.url, http, config, Clock())
        http.headers.update(origin.auth("alice"))
        origin.upload(blob)
        for rng in ("bytes=" + "9" * 100_000 + "-", "bytes=0-" + "9" * 100_000,
                    "bytes=0-1" + ", 0-1" * 200_000):
            r = raw_request(srv.url, get(f"/v/t1/{sha(blob)}".encode(), f"Range: {rng}".encode()))
            assert r.status == 200 and r.body == blob


@pytest.mark.parametrize(("method", "path", "headers", "statuses"), [
    ("POST", "/v1/tus", ["Tus-Resumable: 1.0.0", f"Upload-Length: {HUGE[:5000]}"], {413}),
    ("POST", "/v1/media/upload/request", [f"Content-Length: {'9' * 5000}"], {400, 413}),
    ("PUT", "/v1/profile/alice/photo", ["Content-Type: image/png", f"Content-Length: {HUGE}"],
     {400, 413}),
])  # fmt: skip
def test_numeric_headers_with_thousands_of_digits(
        served: Served, method: str, path: str, headers: list[str],
        statuses: set[int]) -> None:  # fmt: skip
    """Python's int() refuses more than 4,300 digits; the origin answers 4xx, not 500."""
    token = served.origin.auth("alice")["Authorization"]
    lines = [f"Authorization: {token}", *headers]
    r = raw_request(served.url, get(path.encode(), *(h.encode() for h in lines),
                                    method=method.encode()))  # fmt: skip
    assert r.status in statuses, (r.status, r.body[:200])


def test_upload_url_with_a_huge_offset_or_expiry(served: Served) -> None:
    blob = make_blob(2)
    ticket = served.origin.request(blob)
    url = httpx.URL(ticket["upload_url"])
    for name in ("expires", "size"):
        huge = url.copy_set_param(name, "9" * 4400)
        r = served.origin.http.put(huge.raw_path.decode(), content=blob)
        assert r.status_code == 403 and r.json()["error"] == "bad_signature", r.text
    r = served.origin.put(ticket["upload_url"], blob, headers={"X-Upload-Offset": "9" * 5000})
    assert r.status_code == 409, r.text
