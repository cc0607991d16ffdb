"""A long upload body's offset is recorded as it arrives (disk: every `CHECKPOINT` bytes,
synced first; S3 staging: each part stored), over real sockets: HEAD shows the upload moving
during one PUT, and an origin killed with SIGKILL mid-body resumes from its last checkpoint
(it resumed from where that PUT had begun, the whole body sent again). Both for a PUT with
``X-Upload-Offset`` and for the seed's plain PUT of the whole blob (no header), which was
once never checkpointed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy.origin.auth import mint_token
from edgeproxy.origin.s3staging import PART_SIZE
from edgeproxy.origin.staging import CHECKPOINT
from tests.objectstore import S3Endpoint, moto_s3
from tests.servers import free_port
from tests.test_origin import Origin, make_blob, run_origin, sha

MIB = 1024 * 1024
SECRET = "checkpoint-test-jwt-secret-0123456789abcdef"


class StalledBody:
    """A PUT body that sends ``first`` bytes of ``blob``, then waits until released (or the
    connection breaks), as a client on a slow link."""

    def __init__(self, blob: bytes, first: int) -> None:
        self.blob, self.first = blob, first
        self.release = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        for at in range(0, self.first, MIB):
            yield self.blob[at:min(at + MIB, self.first)]
        self.release.wait(60)
        yield self.blob[self.first:]


def _put_in_thread(url: str, body: StalledBody, offset: int | None = 0) -> dict[str, Any]:
    """``offset`` None: the seed's plain PUT of the whole blob, without ``X-Upload-Offset``."""
    result: dict[str, Any] = {}
    headers = {} if offset is None else {"X-Upload-Offset": str(offset)}

    def run() -> None:
        try:
            result["response"] = httpx.put(url, content=iter(body), timeout=60,
                                           headers=headers)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    result["thread"] = thread
    return result


def _offset(upload_url: str) -> int:
    r = httpx.head(upload_url, timeout=10)
    assert r.status_code == 200, r.status_code
    return int(r.headers["upload-offset"])


def _until(check: Any, timeout: float = 40) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _head_moves_during_one_put(origin: Origin, blob: bytes, step: int, exact: bool,
                               offset: int | None = 0) -> None:  # fmt: skip
    """``step``: bytes between checkpoints (``exact``: checkpoints fall on its multiples);
    ``offset`` None: a plain PUT."""
    ticket = origin.request(blob, upload_method="resumable")
    url = origin.url + httpx.URL(ticket["upload_url"]).raw_path.decode()
    stall = 2 * step + 3 * MIB  # (the second checkpoint may come up to a chunk past 2 steps)
    body = StalledBody(blob, stall)
    put = _put_in_thread(url, body, offset)
    seen: list[int] = []

    def at_least(low: int) -> int | None:
        assert put["thread"].is_alive(), put  # (the PUT must not have ended)
        offset = _offset(url)
        if offset and (not seen or seen[-1] != offset):
            seen.append(offset)
        return offset if offset >= low else None

    try:
        _until(lambda: at_least(2 * step))  # two checkpoints while the body is still coming
        for offset in seen:
            assert step <= offset <= stall, seen
            assert not exact or offset % step == 0, seen
    finally:
        body.release.set()
        put["thread"].join(60)
    r = put["response"]
    assert r.status_code == 200 and r.json()["complete"] is True, r.text
    assert _offset(url) == len(blob)
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


@pytest.mark.parametrize("offset", [0, None], ids=["x-upload-offset", "plain-put"])
def test_head_shows_a_long_put_moving_on_disk_staging(tmp_path: Path,
                                                      offset: int | None) -> None:  # fmt: skip
    blob = make_blob(3 * CHECKPOINT // 16)
    with run_origin(tmp_path) as origin:
        _head_moves_during_one_put(origin, blob, CHECKPOINT, exact=False, offset=offset)


def test_a_plain_put_over_partial_bytes_starts_over_with_checkpoints(tmp_path: Path) -> None:
    """A plain PUT still replaces what an earlier request left (its semantics, unchanged), and
    is checkpointed like any other body: HEAD passes two checkpoints while it is stalled, and
    the blob confirmed is the plain PUT's, byte for byte."""
    blob = make_blob(3 * CHECKPOINT // 16)
    earlier = CHECKPOINT + 2 * MIB
    with run_origin(tmp_path) as origin:
        ticket = origin.request(blob, upload_method="resumable")
        url = origin.url + httpx.URL(ticket["upload_url"]).raw_path.decode()
        r = httpx.put(url, content=blob[:earlier], timeout=60, headers={"X-Upload-Offset": "0"})
        assert r.status_code == 200 and r.json()["received"] == earlier, r.text
        body = StalledBody(blob, 2 * CHECKPOINT + 3 * MIB)
        put = _put_in_thread(url, body, None)

        def checkpointed() -> bool:
            assert put["thread"].is_alive(), put  # (the PUT must not have ended)
            return _offset(url) >= 2 * CHECKPOINT

        try:
            _until(checkpointed)
        finally:
            body.release.set()
            put["thread"].join(60)
        r = put["response"]
        assert r.status_code == 200 and r.json()["complete"] is True, r.text
        assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
        assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.mark.parametrize("offset", [0, None], ids=["x-upload-offset", "plain-put"])
def test_head_shows_a_long_put_moving_on_s3_staging(tmp_path: Path, s3: S3Endpoint,
                                                    offset: int | None) -> None:  # fmt: skip
    blob = make_blob(3 * PART_SIZE // 16)
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{s3.new_bucket()}/edge"}
    with run_origin(tmp_path, env=env) as origin:
        _head_moves_during_one_put(origin, blob, PART_SIZE, exact=True, offset=offset)


def _start(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EDGEPROXY_DATA_DIR": str(tmp / "var"),
           "EDGEPROXY_ORIGIN__PORT": str(port), "EDGEPROXY_AUTH__JWT_SECRET": SECRET,
           "EDGEPROXY_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
           "EDGEPROXY_LOG_LEVEL": "warning"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "serve", "--role", "origin"],
                            env=env, stdout=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, "the origin exited at start"
        try:
            return httpx.get(url + "/healthz").status_code == 200
        except httpx.TransportError:
            return False

    _until(up, 30)
    return proc


@pytest.mark.parametrize("offset", [0, None], ids=["x-upload-offset", "plain-put"])
def test_an_origin_killed_mid_body_resumes_from_its_last_checkpoint(tmp_path: Path,
                                                                    offset: int | None) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": "Bearer " + mint_token(SECRET, "alice")}
    blob = make_blob((3 * CHECKPOINT) // 16)
    proc = _start(tmp_path, port)
    try:
        ticket = httpx.post(url + "/v1/media/upload/request", headers=auth, json={
            "file_size": len(blob), "file_type": "image/jpeg",
            "file_hash": "sha256:" + sha(blob), "upload_method": "resumable"}).json()
        upload_url = url + httpx.URL(ticket["upload_url"]).raw_path.decode()
        body = StalledBody(blob, 2 * CHECKPOINT + MIB)
        put = _put_in_thread(upload_url, body, offset)
        _until(lambda: _offset(upload_url) >= 2 * CHECKPOINT)
        proc.send_signal(signal.SIGKILL)  # mid-body: no end of request, no clean shutdown
        proc.wait(10)
        body.release.set()
        put["thread"].join(30)
        assert "response" not in put  # (the PUT never got an answer)
        proc = _start(tmp_path, port)
        resume = _offset(upload_url)
        # not 0 (the whole body would have gone again): its last checkpoint
        assert 2 * CHECKPOINT <= resume <= 2 * CHECKPOINT + MIB
        r = httpx.put(upload_url, content=blob[resume:], timeout=60,
                      headers={"X-Upload-Offset": str(resume)})
        assert r.status_code == 200 and r.json()["complete"] is True, r.text
        confirm = httpx.post(url + "/v1/media/upload/confirm", headers=auth, timeout=60,
                             json={"media_id": ticket["media_id"], "file_sha256": sha(blob)})
        assert confirm.status_code == 200, confirm.text
        assert httpx.get(url + f"/v/t1/{sha(blob)}", timeout=60).content == blob
    finally:
        proc.terminate()
        proc.wait(10)
