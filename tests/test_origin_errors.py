"""The origin's public 5xx bodies: generic JSON, the detail in the log only (a TLS error
towards a storage backend names hosts and certificates)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response

from edgeproxy.config import load_config
from edgeproxy.errors import UpstreamError, UpstreamTimeout
from edgeproxy.origin import create_app
from tests.servers import serve

SECRET_DETAIL = ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed "
                 "certificate (_ssl.c:1006) for s3.internal.example:9000")  # fmt: skip


async def upstream_failure(request: Request) -> Response:
    raise UpstreamError(f"PUT https://s3.internal.example:9000/bucket/blob: {SECRET_DETAIL}")


async def transport_failure(request: Request) -> Response:
    raise httpx.ConnectError(SECRET_DETAIL)


async def slow_backend(request: Request) -> Response:
    raise UpstreamTimeout(f"GET s3.internal.example:9000 timed out after 10 s: {SECRET_DETAIL}")


async def bug(request: Request) -> Response:
    raise RuntimeError(f"unexpected state in /var/lib/edgeproxy/origin: {SECRET_DETAIL}")


@pytest.fixture
def origin_url(tmp_path: Path) -> Iterator[str]:
    app = create_app(load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)}))
    # Routes that fail the way a storage backend or a bug would, behind the real handlers.
    app.add_route("/test/upstream", upstream_failure, methods=["GET", "HEAD"])
    app.add_route("/test/transport", transport_failure)
    app.add_route("/test/slow", slow_backend)
    app.add_route("/test/bug", bug)
    with serve(app) as server:
        yield server.url


@pytest.mark.parametrize(("path", "status", "error"), [
    ("/test/upstream", 502, "bad_gateway"),
    ("/test/transport", 502, "bad_gateway"),
    ("/test/slow", 504, "gateway_timeout"),
    ("/test/bug", 500, "internal_error"),
])  # fmt: skip
def test_5xx_bodies_are_generic_and_the_detail_is_logged(
        origin_url: str, caplog: pytest.LogCaptureFixture, path: str, status: int,
        error: str) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING):
        r = httpx.get(origin_url + path)
    assert r.status_code == status
    assert r.json()["error"] == error and set(r.json()) == {"error", "message"}
    assert r.headers["cache-control"] == "no-store"
    for leak in ("SSL", "certificate", "s3.internal", "/var/lib", "_ssl.c"):
        assert leak not in r.text, leak
    assert SECRET_DETAIL in caplog.text  # the operator still gets the whole story


def test_head_gets_the_status_without_a_body(origin_url: str) -> None:
    r = httpx.head(origin_url + "/test/upstream")
    assert r.status_code == 502 and r.content == b""
