"""A raw-socket HTTP/1.1 client for tests that must send what httpx would normalise away."""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field


@dataclass
class RawResponse:
    """One response as read off the socket."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def raw_request(url: str, data: bytes, timeout: float = 10) -> RawResponse:
    """Send ``data`` (a whole request, maybe malformed) to ``url``'s host and port and read one
    response. A server may close or reset the connection once it has answered before reading
    everything we send: that is fine as long as the answer arrived."""
    host, _, port = url.removeprefix("http://").partition("/")[0].partition(":")
    with socket.create_connection((host, int(port or 80)), timeout=timeout) as s:
        # The server may refuse early and close; its answer can still be in our receive buffer.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(data)
        received = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                received += chunk
                if _complete(received):
                    break
        except ConnectionResetError:
            pass
    return _parse(received)


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    headers = _headers(head)
    if "content-length" in headers:
        return len(body) >= int(headers["content-length"])
    return False  # no length: the body ends when the server closes


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines)}


def _parse(received: bytes) -> RawResponse:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        raise ConnectionError(f"no complete response head, got {received[:200]!r}")
    status = int(head.split(b" ", 2)[1])
    headers = _headers(head)
    if "content-length" in headers:
        body = body[: int(headers["content-length"])]
    return RawResponse(status, headers, body)


def get(path: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    """A request head (no body) for ``path`` with extra header lines, asking to close after."""
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: test", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def read_to_close(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(1 << 20):
        data += chunk
    return data


def split_answers(data: bytes, methods: list[str]) -> list[RawResponse]:
    """The answers, in order, to pipelined requests of these ``methods``, framed by
    ``Content-Length`` (none for HEAD, 204 and 304): all of ``data``, which ends where the
    server closed. An answer cut short, a chunked one, or bytes left over fail the test."""
    split = _split(data, methods)
    assert split is not None, f"the connection closed before all {len(methods)} answers"
    answers, rest = split
    assert not rest, f"bytes after the last answer: {rest[:200]!r}"
    return answers


def read_answers(sock: socket.socket, methods: list[str]) -> list[RawResponse]:
    """`split_answers` on a connection that stays open: read until every answer is in."""
    data = b""
    while (split := _split(data, methods)) is None:
        chunk = sock.recv(1 << 20)
        assert chunk, f"the connection closed before all {len(methods)} answers"
        data += chunk
    return split[0]


def _split(data: bytes, methods: list[str]) -> tuple[list[RawResponse], bytes] | None:
    """The answers and what follows them; None while ``data`` holds only part of them."""
    answers = []
    for method in methods:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        status = int(head.split(b" ", 2)[1])
        headers = _headers(head)
        assert "transfer-encoding" not in headers, head
        length = 0 if method == "HEAD" or status in (204, 304) \
            else int(headers["content-length"])
        if len(data) < length:
            return None
        answers.append(RawResponse(status, headers, data[:length]))
        data = data[length:]
    return answers, data
