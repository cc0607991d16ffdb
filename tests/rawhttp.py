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
