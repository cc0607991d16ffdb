"""`beresp`: the facts of an upstream answer read once its headers are in (RFC 9110 §5.3,
§6.4.1, §14.4; RFC 9112 §6.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from edgeproxy.cache.beresp import from_upstream
from edgeproxy.errors import UpstreamProtocolError


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]

    async def aiter_body(self) -> AsyncIterator[bytes]:
        yield b""

    async def aclose(self) -> None:
        return None


def test_fields_are_combined_once_and_hop_by_hop_ones_left_out() -> None:
    beresp = from_upstream(Answer(200, [
        (b"content-length", b"10"), (b"cache-control", b"public"), (b"connection", b"close"),
        (b"Cache-Control", b"max-age=60"), (b"etag", b'"v1"'),
    ]), 0.0)
    fields = beresp.header_map
    # §5.3: repeated lines are one field, joined in order; Connection is hop-by-hop
    assert fields == {"content-length": "10", "cache-control": "public, max-age=60",
                      "etag": '"v1"'}
    assert beresp.header_map is fields  # made once, however many rules ask
    assert (beresp.length, beresp.body_length, beresp.version) == (10, 10, '"v1"')


@pytest.mark.parametrize(("status", "headers", "extent"), [
    # §14.4: a 206 places its body by Content-Range
    (206, [(b"content-range", b"bytes 5-9/20"), (b"content-length", b"5")], (5, 20, 5)),
    # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length
    (200, [(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], (0, None, None)),
    # §6.4.1: no content in a 304
    (304, [(b"etag", b'"v1"')], (0, 0, 0)),
])
def test_extent_of_the_body(status: int, headers: list[tuple[bytes, bytes]],
                            extent: tuple[int, int | None, int | None]) -> None:
    beresp = from_upstream(Answer(status, headers), 0.0)
    assert (beresp.body_start, beresp.length, beresp.body_length) == extent


def test_a_206_without_a_usable_content_range_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamProtocolError):
        from_upstream(Answer(206, [(b"content-range", b"bytes */20")]), 0.0)
