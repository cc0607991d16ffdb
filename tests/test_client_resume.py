"""Downloads survive a dropped connection (`edgeproxy.client.fetching`): an answer cut short is
resumed by Range from the byte where it stopped, a passing 502/503/504 is retried, a node that
ignores the resumption's Range is read again from the start, and an answer that is not the
span asked for is refused rather than spliced. A real server thread that cuts its answers;
then a whole encrypted upload and download through an edge behind a cutting proxy."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from edgeproxy import cache, origin
from edgeproxy.client import MediaClient
from edgeproxy.client.fetching import fetch_blob
from edgeproxy.config import load_config
from edgeproxy.errors import ClientError, IntegrityError
from edgeproxy.origin.auth import mint_token
from tests.proxies import AnswerCutter
from tests.servers import free_port, serve

BLOB = random.Random(7).randbytes(300_000)


class FlakyBlob:
    """An ASGI app serving ``BLOB`` with Range, that misbehaves as each test arranges: cuts
    the next answers after some bytes, answers some requests with a status, ignores Range, or
    sends a wrong Content-Range. Keeps each request's Range."""

    def __init__(self) -> None:
        self.ranges: list[str | None] = []
        self.cuts: list[int] = []  # body bytes after which the next answers stop, one each
        self.statuses: list[int] = []  # the next requests' answers, one each
        self.ignore_range = False
        self.shift = 0  # added to the start a 206 claims
        self.chunked = False  # no Content-Length: the length is never announced

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        rng = headers.get(b"range")
        self.ranges.append(rng.decode() if rng else None)
        if self.statuses:
            status = self.statuses.pop(0)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        start, end, status = 0, len(BLOB) - 1, 200
        extra: list[tuple[bytes, bytes]] = []
        if rng and not self.ignore_range:
            first, _, last = rng.decode().removeprefix("bytes=").partition("-")
            start, end, status = int(first), int(last) if last else len(BLOB) - 1, 206
            extra = [(b"content-range",
                      f"bytes {start + self.shift}-{end + self.shift}/{len(BLOB)}".encode())]
        body = BLOB[start:end + 1]
        length = [] if self.chunked else [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": [
            *length, (b"x-cache", b"HIT from test"), *extra]})
        if self.cuts:
            cut = self.cuts.pop(0)
            await send({"type": "http.response.body", "body": body[:cut], "more_body": True})
            raise RuntimeError("cut")  # uvicorn drops the connection mid-body
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def flaky() -> Any:
    app = FlakyBlob()
    with serve(app) as server, httpx.Client(timeout=10) as http:
        yield app, http, server.url + "/blob"


def _fetch(http: httpx.Client, url: str, span: tuple[int, int] | None = None,
           retries: int = 5) -> tuple[bytes, int, int]:
    sink = io.BytesIO()
    status, _x_cache, received = fetch_blob(http, url, sink, span, len(BLOB) if span else None,
                                            retries=retries, backoff=0.0, max_backoff=0.0)
    return sink.getvalue(), status, received


def test_a_cut_whole_download_resumes_where_it_stopped(flaky: Any) -> None:
    app, http, url = flaky
    app.cuts = [100_000, 50_000]
    body, status, received = _fetch(http, url)
    assert body == BLOB and status == 200 and received == len(BLOB)
    assert app.ranges == [None, "bytes=100000-299999", "bytes=150000-299999"]


def test_a_cut_range_resumes_within_its_span(flaky: Any) -> None:
    app, http, url = flaky
    app.cuts = [10_000]
    body, status, _ = _fetch(http, url, (1_000, 60_999))
    assert body == BLOB[1_000:61_000] and status == 206
    assert app.ranges == ["bytes=1000-60999", "bytes=11000-60999"]


def test_passing_gateway_errors_are_retried_and_a_404_is_not(flaky: Any) -> None:
    app, http, url = flaky
    app.statuses = [503, 502, 504]
    assert _fetch(http, url)[0] == BLOB
    assert len(app.ranges) == 4
    app.statuses = [404]
    with pytest.raises(ClientError) as refused:
        _fetch(http, url)
    assert refused.value.status == 404 and len(app.ranges) == 5  # asked once


def test_a_node_that_ignores_the_resumption_s_range_is_read_again_whole(flaky: Any) -> None:
    app, http, url = flaky
    app.cuts = [120_000]
    app.ignore_range = True
    body, status, received = _fetch(http, url)
    assert body == BLOB and received == len(BLOB) and status == 200
    assert app.ranges == [None, "bytes=120000-299999"]


def test_a_resumption_answered_with_other_bytes_is_refused_not_spliced(flaky: Any) -> None:
    app, http, url = flaky
    app.cuts = [100_000]
    app.shift = 1  # the 206 claims to start one byte later than asked
    with pytest.raises(IntegrityError):
        _fetch(http, url)


def test_it_gives_up_after_its_retries(flaky: Any) -> None:
    app, http, url = flaky
    app.cuts = [1_000] * 10
    with pytest.raises(ClientError) as gave_up:
        _fetch(http, url, retries=2)
    assert gave_up.value.error == "connection_failed" and "3 attempts" in str(gave_up.value)
    assert len(app.ranges) == 3


def test_an_encrypted_download_through_an_edge_resumes_after_a_cut(tmp_path: Path) -> None:
    ports = {role: free_port() for role in ("origin", "edge")}
    config = load_config(None, env={
        "EDGEPROXY_DATA_DIR": str(tmp_path / "var"),
        "EDGEPROXY_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['edge']}",
        "EDGEPROXY_ORIGIN__PORT": str(ports["origin"]),
    })
    image = tmp_path / "photo.png"
    Image.frombytes("RGB", (800, 600), random.Random(3).randbytes(800 * 600 * 3)).save(image)
    with serve(origin.create_app(config), ports["origin"]) as o, \
            serve(cache.create_app(config, "edge", upstream=o.url), ports["edge"]) as e:
        cutter = AnswerCutter(ports["edge"], cut_after=400_000)
        token = mint_token(config.auth.jwt_secret, "alice")
        try:
            with MediaClient(o.url, token=token, cdn_url=cutter.url,
                             retry_backoff=0.0) as client:
                payload = client.upload(image)
                assert payload["media_url"].startswith(e.url)
                result = client.download(payload, tmp_path / "out.png")
        finally:
            cutter.close()
    assert cutter.cut  # the first answer was cut...
    assert (tmp_path / "out.png").read_bytes() == image.read_bytes()  # ...and the rest came
    assert result.bytes_written == image.stat().st_size
    resumed = [h for h in cutter.heads if b"range: bytes=" in h.lower()]
    assert len(resumed) == 1, cutter.heads


def test_no_node_there_fails_at_once_and_says_why() -> None:
    """A refused first connection is a wrong URL or a stack not running: no retries (the
    CLI then says "cannot connect ... is the stack running?")."""
    url = f"http://127.0.0.1:{free_port()}/blob"
    with httpx.Client(timeout=10) as http, pytest.raises(ClientError) as refused:
        fetch_blob(http, url, io.BytesIO(), None, None, retries=5, backoff=10.0,
                   max_backoff=10.0)  # (a retry would wait 10 s)
    assert refused.value.error == "connection_failed"
    assert isinstance(refused.value.__cause__, httpx.ConnectError)


def test_a_node_restarting_mid_download_is_waited_for(flaky: Any) -> None:
    """Once a node has answered, a refused connection is a restart: retried, then resumed."""
    app, http, url = flaky
    app.cuts = [100_000]
    real = http.stream
    calls = []

    def stream(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("headers", {}).get("Range"))
        if len(calls) == 2:  # the first reconnection finds the node down
            raise httpx.ConnectError("[Errno 111] Connection refused")
        return real(*args, **kwargs)

    http.stream = stream
    body, status, _ = _fetch(http, url)
    assert body == BLOB and status == 200
    assert calls == [None, "bytes=100000-299999", "bytes=100000-299999"]


@pytest.mark.parametrize("shift", [0, 1])
def test_a_cut_answer_of_unannounced_length_resumes_only_at_its_byte(flaky: Any,
                                                                       shift: int) -> None:
    """Chunked, with no length to check against: the resumption's Content-Range must still
    start where the answer was cut."""
    app, http, url = flaky
    app.chunked, app.cuts, app.shift = True, [100_000], shift
    if shift:
        with pytest.raises(IntegrityError):
            _fetch(http, url)
        return
    body, status, received = _fetch(http, url)
    assert body == BLOB and status == 200 and received == len(BLOB)
    assert app.ranges == [None, "bytes=100000-"]


def test_a_signed_url_s_signature_stays_out_of_the_messages(flaky: Any) -> None:
    app, http, url = flaky
    app.statuses = [503] * 3
    with pytest.raises(ClientError) as gave_up:
        _fetch(http, url + "?expires=9&sig=deadbeef", retries=2)
    assert "deadbeef" not in str(gave_up.value) and "/blob answered 503" in str(gave_up.value)
