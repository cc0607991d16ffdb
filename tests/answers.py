"""Answers as a client reads them to their end, for the fault tests: complete, or cut.

An answer is cut when the connection broke before its framing (Content-Length, or the last
chunk) said it was complete; httpx raises then, and `read_answer` records it. The promise every
fault test checks (`assert_never_wrong`): a cut answer's bytes are a prefix of the object's, a
complete answer is exactly the object, and an upstream failure before the first byte is a JSON
502/504: never a complete-looking answer with wrong bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httpx

GATEWAY_ERRORS = (502, 504)


@dataclass
class Answer:
    """What one GET delivered."""

    status: int
    headers: httpx.Headers
    body: bytes
    cut: bool  # the connection broke before the answer was complete

    @property
    def promised(self) -> int | None:
        """The Content-Length the answer promised, if any."""
        length = self.headers.get("content-length")
        return int(length) if length is not None else None


def read_answer(url: str, headers: dict[str, str] | None = None,
                on_bytes: Callable[[int], None] | None = None,
                client: httpx.Client | None = None) -> Answer:  # fmt: skip
    """GET ``url`` and read the answer to its end (``on_bytes``: called with the count so
    far after each chunk, e.g. to kill a process mid-stream)."""
    got = bytearray()
    cut = False
    http = client or httpx.Client(timeout=30)
    try:
        with http.stream("GET", url, headers=headers) as r:
            try:
                for chunk in r.iter_raw():
                    got += chunk
                    if on_bytes is not None:
                        on_bytes(len(got))
            except httpx.HTTPError:
                cut = True
    finally:
        if client is None:
            http.close()
    return Answer(r.status_code, r.headers, bytes(got), cut)


def assert_never_wrong(answer: Answer, body: bytes, *, must_cut: bool) -> None:
    """``answer`` is a 200 either cut with only right bytes or complete and exactly ``body``
    (``must_cut``: it may not be complete at all), or a JSON gateway error (502/504) sent
    before any byte of the object."""
    if answer.status in GATEWAY_ERRORS:
        # the upstream failed before any byte of the object went out: an honest JSON error
        assert not answer.cut, (answer.status, dict(answer.headers))
        error = json.loads(answer.body)
        assert error["error"] and error["message"], error
        return
    assert answer.status == 200, (answer.status, dict(answer.headers), answer.body[:100])
    assert answer.body == body[: len(answer.body)], "a wrong byte was delivered"
    if answer.cut:
        assert answer.promised is None or len(answer.body) < answer.promised
        return
    assert not must_cut, f"the answer completed ({len(answer.body)} bytes) but could not have"
    assert answer.body == body and answer.promised in (None, len(body))
