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
