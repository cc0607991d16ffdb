"""Variants of one URL fetched side by side by the two workers of an edge: a request for a
variant not stored yet must never be failed or cut by another variant's revalidation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.foreign import ForeignOrigin
from tests.nodes import NodeProcess, edge_config_file
from tests.servers import free_port


def test_a_new_variants_suffix_range_beside_a_revalidation_in_another_worker(
        foreign: ForeignOrigin, tmp_path: Path) -> None:
    """RFC 9111 §4.1/§4.3.4 across workers: a suffix range for a variant not stored yet (its
    length learnt by HEAD) followed slice 0 as another worker's revalidation of another
    variant claimed it; that revalidation's 304 stored nothing, and the one-byte answer,
    whose head was out, went out empty (a 206 of Content-Length 1 and no byte). The slice is
    now joined again, as for a fill lost before its first byte."""
    port = free_port()
    config = edge_config_file(tmp_path, port, edge="workers: 2")
    with NodeProcess(config, "edge", f"http://127.0.0.1:{port}", upstream=foreign.url) as edge, \
            ThreadPoolExecutor(4) as pool:
        for n in range(12):
            target = f"/v{n}"
            foreign.route(target, body=b"0123456789", etag='"v1"',
                          headers=[("Cache-Control", "max-age=0"), ("Vary", "Accept-Language")])
            assert httpx.get(edge.url + target).status_code == 200
            asks = [{}, {}, {"Range": "bytes=-1", "Accept-Language": "fr"}]

            def get(headers: dict[str, str], url: str = edge.url + target) -> tuple[int, bytes]:
                try:
                    r = httpx.get(url, headers=headers, timeout=10)
                except httpx.HTTPError as exc:  # (an answer cut short)
                    return 0, repr(exc).encode()
                return r.status_code, r.content

            answers = list(pool.map(get, asks))
            assert answers[:2] == [(200, b"0123456789")] * 2
            assert answers[2] in ((206, b"9"), (200, b"0123456789")), (n, answers[2])
