"""Issue 10, logs: one access-log line per request with the cache verdict (text like nginx's
combined format, or JSON), signature parameters cut out, and `tail -f` of a running edge's log
showing each request as it is answered."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.accesslog import LOGGER, AccessLog, loggable_path
from edgeproxy.config import load_config
from edgeproxy.server import node_app
from tests.nodes import NodeProcess
from tests.origins import TestOrigin
from tests.servers import ServerThread, free_port, serve

# nginx combined, then cache="...", rt=, urt=, node=
LINE = re.compile(r'(?P<client>\S+) - - \[(?P<time>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] '
                  r'"(?P<method>\S+) (?P<path>\S+) HTTP/(?P<version>[\d.]+)" (?P<status>\d{3}) '
                  r'(?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
                  r'cache="(?P<cache>[^"]*)" rt=(?P<rt>\d+\.\d{3}) urt=(?P<urt>-|\d+\.\d{3}) '
                  r'node=(?P<node>\S+)$')  # fmt: skip


@pytest.mark.parametrize(("raw_path", "query", "logged"), [
    (b"/v/t1/ab", b"", "/v/t1/ab"),
    (b"/v/t1/ab", b"exp=1&kid=k1&sig=deadbeef", "/v/t1/ab"),  # a signed URL is a credential
    (b"/v/t1/ab", b"a=1&sig=x&b=2", "/v/t1/ab?a=1&b=2"),  # other parameters stay, in order
    (b"/v/t1/ab", b"%73ig=x", "/v/t1/ab"),  # percent-encoded names are still names
    (b"/a%20b", b"", "/a%20b"),  # the target as received, not decoded
])  # fmt: skip
def test_logged_path_drops_signature_parameters(raw_path: bytes, query: bytes,
                                                 logged: str) -> None:
    assert loggable_path({"raw_path": raw_path, "path": "", "query_string": query}) == logged


class Lines(logging.Handler):
    """Collects formatted lines of one logger."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


@pytest.fixture
def origin() -> Iterator[tuple[TestOrigin, ServerThread]]:
    o = TestOrigin()
    o.put("/v/t1/obj", b"x" * 5000)
    with serve(o) as srv:
        yield o, srv


def _edge(tmp_path: Path, upstream: str, extra: str = "") -> Any:
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: {tmp_path / 'var'}\n"
                      f"edge: {{upstream: '{upstream}', node_name: edge-ams-1}}\n{extra}")
    return node_app(load_config(config), "edge")


def test_text_lines_carry_verdict_bytes_and_node(
        tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> None:
    app = _edge(tmp_path, origin[1].url, "log: {file: access.log}\n")
    with serve(app) as edge, httpx.Client(base_url=edge.url) as client:
        client.get("/v/t1/obj?exp=9&kid=k1&sig=00", headers={"user-agent": 'say "hi"'})
        client.get("/v/t1/obj", headers={"referer": "https://app.example/chat"})
        client.get("/missing")
        lines, _ = _new_lines(tmp_path / "access.log", 0, 3)
    found = [LINE.fullmatch(line) for line in lines]
    assert len(found) == 3 and all(found), lines
    first, second, third = (m.groupdict() for m in found if m)
    # the signed URL was refused (bad signature) before any upstream traffic
    assert first["path"] == "/v/t1/obj" and first["status"] == "403"
    assert first["agent"] == r"say \x22hi\x22"  # quotes escaped as nginx does
    assert (second["status"], second["bytes"], second["cache"]) == \
        ("200", "5000", "MISS from edge-ams-1")
    assert second["referer"] == "https://app.example/chat"
    assert third["status"] == "404" and third["cache"].startswith("MISS from edge")
    assert {m["node"] for m in (first, second, third)} == {"edge-ams-1"}
    assert {m["client"] for m in (first, second, third)} == {"127.0.0.1"}
    assert first["urt"] in ("-", "0.000")  # refused before any upstream traffic
    assert float(second["urt"]) > 0  # the miss waited on the upstream


def test_json_lines_and_upstream_time(access_lines: Lines) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        scope.setdefault("edgeproxy", {})["upstream_time"] = 0.25
        await send({"type": "http.response.start", "status": 206,
                    "headers": [(b"x-cache", b"HIT from shield")]})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"de"})

    with serve(AccessLog(app, node="shield-1", fmt="json")) as srv:
        httpx.get(srv.url + "/v/t1/obj?kid=k1&x=1")
    (line,) = access_lines.lines
    entry = json.loads(line)
    assert entry["time"].endswith("Z")
    assert {k: entry[k] for k in ("client", "method", "path", "status", "bytes", "cache",
                                  "upstream_time", "node")} == {
        "client": "127.0.0.1", "method": "GET", "path": "/v/t1/obj?x=1", "status": 206,
        "bytes": 5, "cache": "HIT from shield", "upstream_time": 0.25, "node": "shield-1"}
    assert entry["duration"] >= 0


def test_access_off_installs_nothing(tmp_path: Path,
                                     origin: tuple[TestOrigin, ServerThread]) -> None:
    assert isinstance(_edge(tmp_path, origin[1].url), AccessLog)
    # bare YAML off/on are booleans; they mean what they say
    assert not isinstance(_edge(tmp_path, origin[1].url, "log: {access: off}\n"), AccessLog)
    assert load_config(None, env={"EDGEPROXY_LOG__ACCESS": "off"}).log.access == "off"
    assert load_config(None, env={"EDGEPROXY_LOG__ACCESS": "json"}).log.access == "json"


def _new_lines(path: Path, offset: int, want: int, timeout: float = 5) -> tuple[list[str], int]:
    """Like ``tail -f``: lines appended after ``offset``, waiting until ``want`` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        data = path.read_bytes()[offset:] if path.exists() else b""
        lines = data.decode().splitlines()
        if len(lines) >= want or time.monotonic() > deadline:
            return lines, offset + len(data)
        time.sleep(0.02)


def test_tail_of_a_running_edge_shows_each_request_with_its_verdict(
        tmp_path: Path, origin: tuple[TestOrigin, ServerThread]) -> None:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: var\nlog_level: info\nlog: {{file: logs/access.log}}\n"
                      f"edge: {{port: {port}, upstream: '{origin[1].url}'}}\n")
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "access.log"
    with NodeProcess(config, "edge", f"http://127.0.0.1:{port}") as edge:
        _, offset = _new_lines(log, 0, 1)  # the start-up probe's /healthz
        for expected in ("MISS from edge", "HIT from edge", "HIT from edge"):
            r = httpx.get(edge.url + "/v/t1/obj")
            assert r.headers["x-cache"] == expected
            lines, offset = _new_lines(log, offset, 1)
            assert len(lines) == 1, lines  # written as the request is answered, unbuffered
            m = LINE.fullmatch(lines[0])
            assert m is not None, lines[0]
            assert (m["path"], m["status"], m["cache"], m["node"]) == \
                ("/v/t1/obj", "200", expected, "edge")
        app_log = edge.stderr()
    # server and app lines: timestamp and level first
    starts = [line for line in app_log.splitlines() if "Application startup complete" in line]
    assert starts and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} INFO ", starts[0])
    assert (tmp_path / "edge.out").read_text() == ""  # with log.file, nothing on stdout
