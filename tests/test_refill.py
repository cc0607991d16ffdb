"""A slice filled again while an earlier fill of it still waits for the group commit.

Fills of one slice of one key write to one fill path (other workers follow a fill there), and
a finished fill's file waits for the commit that moves it into place. Two variants of a key
that varies are two fills of the same slice within those few milliseconds: the second must
not write over the file the first left for the commit (stored under the first body's
checksum, then failing it), nor lose its own file to that commit (a storage fault that loses
the whole batch).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edgeproxy.cache import batch
from edgeproxy.cache.types import Receive, Scope, Send
from edgeproxy.server import node_app
from tests.chain import edge_config
from tests.origins import pattern
from tests.servers import ServerThread, serve

SIZE = 3_000_000  # three slice files, none inline
LANGUAGES = ("en", "fr", "de")


def _body(path: str, language: str) -> bytes:
    return pattern(SIZE, seed=int(hashlib.sha256(f"{path}:{language}".encode()).hexdigest(), 16)
                   % 10**6)


async def _varying_origin(scope: Scope, receive: Receive, send: Send) -> None:
    """One body per Accept-Language, each with its own validator; Range is not honoured."""
    if scope["type"] != "http":
        return
    headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
    body = _body(scope["path"], headers.get("accept-language", "en"))
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/octet-stream"),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"max-age=600"), (b"vary", b"accept-language"),
        (b"etag", b'"' + hashlib.sha256(body).hexdigest()[:16].encode() + b'"')]})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def _edge(tmp_path: Path, upstream: str) -> Iterator[ServerThread]:
    with serve(node_app(edge_config(tmp_path, upstream), "edge")) as srv:
        yield srv


def _counted(metrics: str, name: str) -> float:
    """The sum of a counter's samples over its labels."""
    return sum(float(line.rpartition(" ")[2]) for line in metrics.splitlines()
               if line.startswith(name + "{"))


def test_variants_filled_before_the_commit_are_each_stored_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a loop busy enough that the commit comes after the next variant's fill
    monkeypatch.setattr(batch, "COMMIT_DELAY", 0.5)
    with serve(_varying_origin) as origin, _edge(tmp_path, origin.url) as edge, \
            httpx.Client(base_url=edge.url, timeout=30) as client:
        for n in range(3):
            for language in LANGUAGES:
                r = client.get(f"/static/o{n}", headers={"accept-language": language})
                assert r.status_code == 200 and r.content == _body(f"/static/o{n}", language)
        for n in range(3):
            for language in LANGUAGES:
                again = client.get(f"/static/o{n}", headers={"accept-language": language})
                assert again.content == _body(f"/static/o{n}", language)
                assert again.headers["x-cache"].startswith("HIT"), \
                    (n, language, again.headers["x-cache"])
        metrics = client.get("/metrics").text
    assert _counted(metrics, "edgeproxy_storage_faults_total") == 0
    assert _counted(metrics, "edgeproxy_integrity_failures_total") == 0
