"""A request body whose client stops sending (``http_limits.body_timeout``, nginx's
client_body_timeout): 408 and close, and the app sees the client gone.

Before, a PUT whose client sent part of its body and kept the socket open held the request, and
an upload with it: for as long as the socket stayed open, every resume answered 409
``upload_in_progress`` and ``HEAD`` the offset before the PUT (found from outside, watched for
90 s).
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from edgeproxy.config import HTTPLimitsConfig
from edgeproxy.guard import RequestGuard, uvicorn_http_options
from tests.nodes import NodeProcess
from tests.servers import free_port, serve
from tests.test_origin import make_blob, sha

BODY_TIMEOUT = 0.6


async def reader(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers with its length (or nothing, the client gone)."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def _answer(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_a_stalled_body_gets_408_and_the_connection_closes() -> None:
    limits = HTTPLimitsConfig(body_timeout=BODY_TIMEOUT)
    with serve(RequestGuard(reader, limits), lifespan="off",
               **uvicorn_http_options(limits)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        for sent in (b"", b"x" * 100):  # no byte of the body, or some
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(b"PUT /u HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n" + sent)
                started = time.monotonic()
                answer = _answer(s)
                waited = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "request_timeout"
            assert BODY_TIMEOUT * 0.9 < waited < BODY_TIMEOUT + 1.5, waited


def test_a_slow_body_that_keeps_coming_is_not_cut() -> None:
    """The bound is on silence, not on the whole body: a byte every fifth of the bound (room
    for a loaded machine), for more than a bound in all, completes."""
    limits = HTTPLimitsConfig(body_timeout=2.0)
    with serve(RequestGuard(reader, limits), lifespan="off",
               **uvicorn_http_options(limits)) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(b"PUT /u HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
            for _ in range(6):
                time.sleep(limits.body_timeout / 5)
                s.sendall(b"y")
            answer = b""
            while not answer.endswith(b"}"):
                answer += s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"size": 6}


def test_a_stalled_upload_is_released_and_resumes(tmp_path: Path) -> None:
    """Against an origin process: a PUT that sends part of its blob and stalls gets 408; the
    bytes that reached the disk are recorded, the upload is no longer held (before: 409
    ``upload_in_progress`` for as long as the socket stayed open), a resume from the
    recorded offset completes it, and it confirms."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f"data_dir: var\nlog_level: warning\nlog: {{access: 'off'}}\n"
                      f"origin: {{port: {port}}}\n"
                      f"http_limits: {{body_timeout: {BODY_TIMEOUT}}}\n")
    node = NodeProcess(config, "origin", f"http://127.0.0.1:{port}")
    token = _token(config)
    blob = make_blob(12_500)  # ~200 KB
    with node, httpx.Client(base_url=node.url, timeout=10,
                                    headers={"Authorization": f"Bearer {token}"}) as http:
        r = http.post("/v1/media/upload/request", json={
            "file_size": len(blob), "file_type": "image/jpeg", "file_hash": f"sha256:{sha(blob)}"})
        assert r.status_code == 200, r.text
        media_id, url = r.json()["media_id"], httpx.URL(r.json()["upload_url"])
        target = url.raw_path.decode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"PUT {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(blob)}\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode() + blob[:50_000])
            answer = _answer(s)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        # the request's handler records what arrived as it ends, moments after the 408
        deadline = time.monotonic() + 5
        while True:
            head = http.head(target)
            assert head.status_code == 200, head.headers
            offset = int(head.headers["x-upload-offset"])
            assert 0 <= offset <= 50_000
            r = http.put(target, content=blob[offset:],
                         headers={"X-Upload-Offset": str(offset)} if offset else {})
            if r.status_code != 409 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        r = http.post("/v1/media/upload/confirm", json={"media_id": media_id,
                                                        "file_sha256": sha(blob)})
        assert r.status_code == 200, r.text
        assert http.get(f"/v/t1/{sha(blob)}").content == blob


def _token(config: Path) -> str:
    out = subprocess.run([sys.executable, "-m", "edgeproxy", "--config", str(config), "token",
                          "--user", "alice"], capture_output=True, text=True, check=True)
    return out.stdout.strip()
