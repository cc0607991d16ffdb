"""The origin on a full disk: every write that finds no space answers 507 Insufficient Storage
(RFC 4918 §11.5) as JSON naming the cause, never a 500 with a traceback logged as a bug, nor a
503 blaming the database; once space is freed, the same uploads resume and confirm.

The data directory is a real small tmpfs (the tests and CI run as root, as for the caches'
`tests/test_fault_disk_full.py`); without root they cannot run, which fails under CI.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_origin import Origin, error_of, make_blob, run_origin, sha
from tests.volumes import Tmpfs, need_root

VOLUME = 8 * 1024**2


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Tmpfs]:
    need_root()
    vol = Tmpfs(tmp_path / "vol", VOLUME)
    try:
        yield vol
    finally:
        vol.close()


def assert_full(r: httpx.Response) -> None:
    assert r.status_code == 507, (r.status_code, r.text)
    assert error_of(r) == "insufficient_storage" and "space" in r.json()["message"]
    assert r.headers["retry-after"] and r.headers["cache-control"] == "no-store"


def target(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


def test_a_full_disk_answers_507_and_recovers(volume: Tmpfs,
                                              caplog: pytest.LogCaptureFixture) -> None:
    blob, done, thumbed = make_blob(40_000), make_blob(1000), make_blob(1000)
    with run_origin(volume.directory) as o:
        ticket = o.request(blob)
        url = target(ticket["upload_url"])
        assert o.http.put(url, content=blob[:100_000],
                          headers={"X-Upload-Offset": "0"}).status_code == 200  # fmt: skip
        tickets = [o.request(done), o.request(thumbed)]
        for t, b in zip(tickets, (done, thumbed), strict=True):
            assert o.put(t["upload_url"], b).status_code == 200
        volume.fill_up()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="edgeproxy"):
            checks(o, volume, blob, url, tickets, done, thumbed)
        bugs = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
        assert not bugs, [r.getMessage() for r in bugs]
        assert any("storage" in r.getMessage() for r in caplog.records)  # the operator's hint


def checks(o: Origin, volume: Tmpfs, blob: bytes, url: str, tickets: list[dict[str, str]],
           done: bytes, thumbed: bytes) -> None:  # fmt: skip
    assert_full(o.http.post("/v1/media/upload/request", json={
        "file_size": 5000, "file_type": "image/jpeg", "file_hash": "a" * 64}))  # fmt: skip
    assert_full(o.http.put(url, content=blob[100_000:], headers={"X-Upload-Offset": "100000"}))
    assert_full(o.http.patch(url, content=blob[100_000:], headers={
        "Tus-Resumable": "1.0.0", "Upload-Offset": "100000",
        "Content-Type": "application/offset+octet-stream"}))  # fmt: skip
    assert_full(o.confirm(tickets[0]["media_id"], sha(done)))
    assert_full(o.confirm(tickets[1]["media_id"], sha(thumbed), thumb=make_blob(100)))
    assert_full(o.http.put("/v1/profile/alice/photo", content=b"\xff\xd8" + bytes(300_000),
                           headers={"Content-Type": "image/jpeg"}))  # fmt: skip
    h = o.http.head(url)  # nothing half-written was recorded
    assert h.status_code == 200 and h.headers["x-upload-offset"] == "100000"
    assert all(name.endswith(".part") for name in o.staging()), o.staging()  # no .thumb, pp-

    volume.drain()
    r = o.http.put(url, content=blob[100_000:], headers={"X-Upload-Offset": "100000"})
    assert r.status_code == 200 and r.json()["complete"], r.text
    assert o.confirm(ticket_id(url), sha(blob)).status_code == 200
    assert o.http.get(f"/v/t1/{sha(blob)}").content == blob
    assert o.confirm(tickets[0]["media_id"], sha(done)).status_code == 200
    assert o.confirm(tickets[1]["media_id"], sha(thumbed), thumb=make_blob(100)).status_code == 200
    assert o.http.get(f"/v/t1/{sha(thumbed)}").content == thumbed


def ticket_id(url: str) -> str:
    return httpx.URL(url).path.rsplit("/", 1)[1]
