"""The one table where failures become statuses, and the transport seam tests inject through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import create_app
from edgeproxy.cache.boundary import http_error
from edgeproxy.cache.transport import BeReq
from edgeproxy.config import load_config
from edgeproxy.errors import (
    FillAborted,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRefused,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from tests.servers import serve


@pytest.mark.parametrize(("exc", "status", "code"), [
    (UpstreamTimeout("read timed out after 10s"), 504, "upstream_timeout"),
    (UpstreamUnreachable("connection reset by 10.0.0.7"), 502, "upstream_unavailable"),
    (UpstreamRefused("TLS failure: certificate verify failed"), 502, "upstream_unavailable"),
    (UpstreamProtocolError("invalid chunk size"), 502, "bad_upstream_answer"),
    (FillAborted("fill ended short"), 502, "fill_aborted"),
    (UpstreamError("anything else"), 502, "upstream_error"),
])
def test_each_failure_kind_has_one_status(exc: UpstreamError, status: int, code: str) -> None:
    err = http_error(exc, "edge-1")
    assert (err.status, err.error) == (status, code)
    # public bodies never carry the upstream's internals (addresses, TLS details)
    assert str(exc) not in err.message and err.body()["tier"] == "edge-1"


class ScriptedResponse:
    """An `UpstreamResponse` whose body comes in pieces."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]],
                 pieces: list[bytes]) -> None:
        self.status, self.headers, self._pieces = status, headers, pieces

    async def aiter_body(self) -> AsyncIterator[bytes]:
        for piece in self._pieces:
            await asyncio.sleep(0)
            yield piece

    async def aclose(self) -> None:
        return None


class ScriptedTransport:
    """An in-process upstream: the seam a cache node is built with in unit tests."""

    def __init__(self) -> None:
        self.seen: list[BeReq] = []

    async def send(self, bereq: BeReq) -> ScriptedResponse:
        self.seen.append(bereq)
        body = b"x" * 1000
        return ScriptedResponse(200, [(b"cache-control", b"max-age=60"),
                                      (b"transfer-encoding", b"chunked")], [body[:400], body[400:]])

    async def aclose(self) -> None:
        return None


def test_an_injected_transport_is_the_upstream(tmp_path: Path) -> None:
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    transport = ScriptedTransport()
    app = create_app(config.replace(content_classes=()), "edge", transport=transport)
    with serve(app) as edge:
        first = httpx.get(edge.url + "/a?b=1", headers={"x-trace": "t1"})
        second = httpx.get(edge.url + "/a?b=1")
    assert first.content == second.content == b"x" * 1000
    assert first.headers["x-cache"] == "MISS from edge"
    assert second.headers["x-cache"] == "HIT from edge"
    assert len(transport.seen) == 1
    bereq = transport.seen[0]
    assert (bereq.method, bereq.target, bereq.key) == ("GET", "/a?b=1", "/a?b=1")
    assert (b"x-trace", b"t1") in bereq.headers


class BuggyTransport(ScriptedTransport):
    """An upstream seam with a bug of ours in it: not an upstream failure."""

    async def send(self, bereq: BeReq) -> ScriptedResponse:
        raise RuntimeError("a bug, not an upstream failure")


def test_a_bug_is_a_json_500_and_the_node_serves_on(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Anything else raised in the steps (a bug) is answered like every refusal of the node's,
    with a JSON body (it was uvicorn's plain-text 500), and logged with its traceback."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    app = create_app(config.replace(content_classes=()), "edge", transport=BuggyTransport())
    with serve(app) as edge:
        r = httpx.get(edge.url + "/a")
        again = httpx.get(edge.url + "/a", headers={"range": "bytes=0-9"})
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"] == "internal_error" and "RuntimeError" not in r.text
    # (a range's flight runs as a task of its own: what fails there fails the flight, 502)
    assert again.status_code == 502 and again.headers["content-type"] == "application/json"
    assert "a bug, not an upstream failure" in caplog.text
