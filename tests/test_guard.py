"""The request guard over real sockets: head limits (431/414) and bad targets (400) on every
role, under both HTTP parsers uvicorn may run, and never a 5xx or a hang."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy.config import HTTPLimitsConfig, load_config
from edgeproxy.guard import RequestGuard, h11_http_options, head_cap, uvicorn_http_options
from edgeproxy.server import create_node_app
from tests.rawhttp import get, raw_request
from tests.servers import ServerThread, free_port, serve

LIMITS = HTTPLimitsConfig()


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An app that answers 200 with what it saw: whatever reaches it passed the guard."""
    if scope["type"] != "http":
        return
    body = json.dumps({"raw_path": scope["raw_path"].decode("latin-1"), "path": scope["path"],
                       "headers": len(scope["headers"])}).encode()  # fmt: skip
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


PARSERS = {
    # what `edgeproxy run` uses: httptools with the limits enforced while reading
    "httptools": uvicorn_http_options(LIMITS),
    # the pure-Python fallback: h11 with its receive buffer capped
    "h11": h11_http_options(LIMITS),
}


@pytest.fixture(params=sorted(PARSERS), scope="module")
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    with serve(RequestGuard(echo, LIMITS), lifespan="off", **PARSERS[request.param]) as srv:
        yield request.param, srv.url


def header_lines(count: int, size: int = 1) -> list[bytes]:
    return [b"X-F%d: %s" % (i, b"v" * size) for i in range(count)]


def assert_error(data: bytes, url: str, statuses: set[int], error: str | None) -> None:
    """The answer is one of ``statuses``; a JSON error named ``error`` when it is ours."""
    r = raw_request(url, data)
    assert r.status in statuses, (r.status, r.body[:200])
    if error is not None and r.headers.get("content-type") == "application/json":
        body = json.loads(r.body)
        assert body["error"] == error and body["message"]


def test_ordinary_request_passes(server: tuple[str, str]) -> None:
    _, url = server
    r = raw_request(url, get(b"/v/t1/abc?x=1", *header_lines(90, 100)))
    assert r.status == 200
    assert json.loads(r.body) == {"raw_path": "/v/t1/abc", "path": "/v/t1/abc", "headers": 92}


@pytest.mark.parametrize(("target", "raw_path", "path"), [
    (b"/v/./t1/%61bc", "/v/t1/abc", "/v/t1/abc"),
    (b"/x/../v/%2e/t1/a%20b%3f", "/v/t1/a%20b%3F", "/v/t1/a b?"),
    (b"/v/%2E%2E/%2e%2e/v/t1/abc?exp=1", "/v/t1/abc", "/v/t1/abc"),
])  # fmt: skip
def test_the_app_sees_the_canonical_target(server: tuple[str, str], target: bytes,
                                           raw_path: str, path: str) -> None:  # fmt: skip
    """One spelling per path for every role: what a signature check or a route sees."""
    _, url = server
    r = raw_request(url, get(target))
    assert r.status == 200
    assert json.loads(r.body) == {"raw_path": raw_path, "path": path, "headers": 2}


@pytest.mark.parametrize(("name", "data", "statuses", "error"), [
    # RFC 6585 §5: too many fields, or too many bytes in them
    ("101 fields", get(b"/", *header_lines(100)), {431}, "headers_too_large"),
    ("17 KiB field", get(b"/", b"X-Big: " + b"a" * 17 * 1024), {431}, "headers_too_large"),
    ("17 KiB over fields", get(b"/", *header_lines(17, 1024)), {431}, "headers_too_large"),
    # RFC 9110 §15.5.15: the target is longer than the server will interpret
    ("9 KiB path", get(b"/" + b"a" * 9 * 1024), {414}, "uri_too_long"),
    ("9 KiB query", get(b"/a?" + b"q" * 9 * 1024), {414}, "uri_too_long"),
    # the target has no canonical form (RFC 3986 §2.1, §3.3)
    ("NUL", get(b"/%00"), {400}, "bad_target"),
    ("CRLF", get(b"/%0d%0aSet-Cookie:%20x=1"), {400}, "bad_target"),
    ("encoded slash", get(b"/v/t1%2Fabc"), {400}, "bad_target"),
    ("bad escape", get(b"/a%zz"), {400}, "bad_target"),
    ("asterisk", get(b"*", method=b"OPTIONS"), {400}, "bad_target"),
    # RFC 9112 §3.2: no Host in HTTP/1.1, two Host fields, a Host that is not a host
    ("no Host", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", {400}, "bad_host"),
    ("two Hosts", get(b"/", b"Host: other"), {400}, "bad_host"),
    ("Host with a path", b"GET / HTTP/1.1\r\nHost: a/b\r\nConnection: close\r\n\r\n",
     {400}, "bad_host"),
    ("Host with a space", b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
     {400}, "bad_host"),
    # a port that names no TCP port (accepted before; an outside fuzzing run)
    ("Host with port 99999999999",
     b"GET / HTTP/1.1\r\nHost: a:99999999999\r\nConnection: close\r\n\r\n", {400}, "bad_host"),
    ("Host with port 65536", b"GET / HTTP/1.1\r\nHost: a:65536\r\nConnection: close\r\n\r\n",
     {400}, "bad_host"),
])  # fmt: skip
def test_refusals(server: tuple[str, str], name: str, data: bytes, statuses: set[int],
                  error: str) -> None:  # fmt: skip
    parser, url = server
    if parser == "h11" and name in ("no Host", "two Hosts"):
        error = "bad_request"  # h11 refuses these itself, as requests it cannot read
    assert_error(data, url, statuses, error)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 may go without Host
    b"GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n",  # empty: no authority
    b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: cdn.example-1.com:443\r\nConnection: close\r\n\r\n",
])
def test_hosts_that_pass(server: tuple[str, str], data: bytes) -> None:
    _, url = server
    assert raw_request(url, data).status == 200


@pytest.mark.parametrize(("name", "data"), [
    ("1 MB field", get(b"/", b"X-Big: " + b"a" * 1_000_000)),
    ("10,000 fields", get(b"/", *header_lines(10_000))),
    ("100 KB target", get(b"/" + b"a" * 100_000)),
    ("raw NUL", get(b"/a\x00b")),
])
def test_hostile_heads_never_reach_the_app(server: tuple[str, str], name: str,
                                           data: bytes) -> None:  # fmt: skip
    """httptools answers 431/414 while reading; h11 refuses past its capped buffer with 400."""
    parser, url = server
    started = time.monotonic()
    assert_error(data, url, {400, 414, 431}, None)
    assert time.monotonic() - started < 5
    if parser == "httptools" and name != "raw NUL":
        assert raw_request(url, data).headers["content-type"] == "application/json"


def test_endless_field_is_cut_off(server: tuple[str, str]) -> None:
    """A field that never ends is refused once the head passes the cap, not buffered forever."""
    _, url = server
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Endless: ")
        sent, answer = 0, b""
        try:
            while sent < 10 * head_cap(LIMITS):
                s.sendall(b"a" * 16384)
                sent += 16384
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:100]


def test_limits_are_configurable(tmp_path: Path) -> None:
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path),
                                    "EDGEPROXY_HTTP_LIMITS__MAX_HEADER_COUNT": "5",
                                    "EDGEPROXY_HTTP_LIMITS__MAX_TARGET_LENGTH": "64"})
    limits = config.http_limits
    with serve(RequestGuard(echo, limits), lifespan="off", **uvicorn_http_options(limits)) as srv:
        assert raw_request(srv.url, get(b"/", *header_lines(3))).status == 200
        assert raw_request(srv.url, get(b"/", *header_lines(5))).status == 431
        assert raw_request(srv.url, get(b"/" + b"a" * 63)).status == 200
        assert raw_request(srv.url, get(b"/" + b"a" * 64)).status == 414


@pytest.mark.parametrize("role", ["origin", "shield", "edge"])
def test_every_role_is_guarded(tmp_path: Path, role: str) -> None:
    """The targets that gave 502 at the edge now get 400 before any upstream is asked."""
    config = load_config(None, env={"EDGEPROXY_DATA_DIR": str(tmp_path)})
    dead_upstream = f"http://127.0.0.1:{free_port()}"
    app = create_node_app(config, role, upstream=dead_upstream)
    server = ServerThread(app, **uvicorn_http_options(config.http_limits)).start()
    try:
        for target in (b"/%00", b"/%0d%0a", b"/v/t1/%2e%2e%2f", b"/v/%zz"):
            assert_error(get(target), server.url, {400}, "bad_target")
        assert_error(get(b"*", method=b"OPTIONS"), server.url, {400}, "bad_target")
        assert_error(get(b"/", b"X-Big: " + b"a" * 1_000_000), server.url, {431},
                     "headers_too_large")
        assert raw_request(server.url, get(b"/healthz")).status == 200
    finally:
        server.stop()


def test_edgeproxy_serve_with_workers_refuses_hostile_heads(tmp_path: Path) -> None:
    """A real `edgeproxy serve` process with two workers: each worker runs the guarded protocol
    (it reaches them through uvicorn's process spawning) and the guard."""
    from tests.test_cache_crash import edge_config, start_edge

    config, port, url = edge_config(tmp_path, workers=2)
    edge = start_edge(config, f"http://127.0.0.1:{free_port()}", port)
    try:
        for _ in range(4):  # new connections, spread over the workers
            assert_error(get(b"/", b"X-Big: " + b"a" * 1_000_000), url, {431},
                         "headers_too_large")
            assert_error(get(b"/", *header_lines(10_000)), url, {431}, "headers_too_large")
            assert_error(get(b"/%00"), url, {400}, "bad_target")
            assert_error(get(b"/" + b"a" * 100_000), url, {414}, "uri_too_long")
    finally:
        edge.terminate()
        edge.wait(10)


@pytest.mark.parametrize("version", [b"2.0", b"0.9", b"3.0"])
def test_another_major_version_gets_505(server: tuple[str, str], version: bytes) -> None:
    """RFC 9110 §15.6.6: a request line naming a version other than HTTP/1.x is not served
    (it was answered, and relayed upstream, as if it were HTTP/1.1). h11 refuses such a
    line while parsing it, as a request it cannot read (400)."""
    parser, url = server
    r = raw_request(url, b"GET / HTTP/" + version + b"\r\nHost: a\r\nConnection: close\r\n\r\n")
    body = json.loads(r.body)
    if parser == "httptools" and version != b"3.0":  # (llhttp reads 0.9 and 2.0, not 3.0)
        assert (r.status, body["error"]) == (505, "http_version_not_supported")
        assert body["supported"] == ["HTTP/1.0", "HTTP/1.1"]
    else:
        assert (r.status, body["error"]) in {(505, "http_version_not_supported"),
                                             (400, "bad_request")}


@pytest.mark.parametrize("data", [
    b"NOT A REQUEST\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nNo colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
])  # fmt: skip
def test_an_unreadable_request_gets_a_json_400(server: tuple[str, str], data: bytes) -> None:
    """Every refusal has a JSON body saying what was wrong (uvicorn's own was plain text)."""
    _, url = server
    r = raw_request(url, data)
    assert r.status == 400 and r.headers["content-type"] == "application/json", r.body[:200]
    body = json.loads(r.body)
    assert body["error"] == "bad_request" and body["message"]



@pytest.mark.parametrize(("data", "status", "error"), [
    (b"FOO / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "unknown_method"),
    (b"get /pot HTTP/1.1\r\nHost: a\r\n\r\n", 400, "unknown_method"),  # case-sensitive
    (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad_request"),  # not a token: unreadable
    (b"FOO /\r\n\r\n", 400, "bad_request"),  # not a request line
    (b"NOT A REQUEST\r\n\r\n", 400, "bad_request"),
])
def test_a_method_the_parser_does_not_know_is_named(server: tuple[str, str], data: bytes,
                                                    status: int, error: str) -> None:
    """A request method llhttp does not know is refused saying so (RFC 9110 §9.1 suggests
    501; bad input is a 4xx here). h11 reads any token and hands it on (the app here answers
    it). A line that is not a request line stays a plain 400."""
    parser, url = server
    r = raw_request(url, data)
    if parser == "httptools" or error == "bad_request":
        assert r.headers["content-type"] == "application/json", r.body[:200]
        body = json.loads(r.body)
        assert (r.status, body["error"]) == (status, error)
        if error == "unknown_method":
            assert data.split(b" ")[0].decode() in body["message"]
    else:
        assert r.status == 200  # (the echo app here answers every method)
