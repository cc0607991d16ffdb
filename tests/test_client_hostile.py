"""The client against servers that lie. A node lying about a blob's size: the payload's
``file_length`` fixes how many bytes the blob has, so a body that goes on past them (chunked, no
end in sight) or a Content-Length that promises more is refused as it arrives, not written to
the receiver's disk until the hash check at the end (or a full disk). A media API whose answers
the upload cannot use: a `ClientError` saying so, not a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import crypto
from edgeproxy.client import MediaClient, fetching
from edgeproxy.errors import ClientError, IntegrityError
from tests.servers import serve

PLAIN = random.Random(11).randbytes(1000)
KEY = bytes(range(32))
BLOB, RESULT = crypto.encrypt_bytes(PLAIN, KEY, "document")
PADDING_CAP = 32 * 1024**2  # what the lying node sends at most after the blob (bounds the test)


class LyingNode:
    """Serves ``BLOB`` and then more: ``mode`` "endless" streams ``padding`` bytes of filler
    after it with no Content-Length; "huge" announces a terabyte, sends 1 MiB and cuts.
    Counts the requests."""

    def __init__(self, mode: str, padding: int = PADDING_CAP) -> None:
        self.mode = mode
        self.padding = padding
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        filler = bytes(1 << 20)
        if self.mode == "huge":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(10**12).encode())]})
            await send({"type": "http.response.body", "body": BLOB + filler, "more_body": True})
            raise RuntimeError("cut")  # uvicorn drops the connection mid-body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": BLOB, "more_body": True})
        for _ in range(self.padding // len(filler)):
            await send({"type": "http.response.body", "body": filler, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _payload(url: str) -> dict[str, Any]:
    return {"type": "document", "media_url": url, "media_key": base64.b64encode(KEY).decode(),
            "file_sha256": RESULT.plain_sha256, "file_enc_sha256": RESULT.enc_sha256,
            "file_length": len(PLAIN),
            "chunk_macs": base64.b64encode(RESULT.chunk_macs).decode()}  # fmt: skip


@pytest.mark.parametrize(("mode", "says"), [("endless", "sent more than the"),
                                            ("huge", "Content-Length 1000000000000 is not")])
def test_a_body_longer_than_the_blob_is_refused_as_it_arrives(tmp_path: Path, mode: str,
                                                              says: str) -> None:
    node = LyingNode(mode)
    out = tmp_path / "out" / "doc.bin"
    out.parent.mkdir()
    with serve(node) as server, MediaClient("", retries=3, retry_backoff=0.0) as client, \
            pytest.raises(IntegrityError, match=says):
        client.download(_payload(server.url + "/blob"), out)
    assert node.requests == 1  # refused, not resumed or read again
    assert list(out.parent.iterdir()) == []  # no plaintext, no temporary blob left behind


def test_the_same_node_telling_the_truth_is_read(tmp_path: Path) -> None:
    """(The check above is the blob's size, not a refusal of chunked answers.)"""
    node = LyingNode("endless", padding=0)
    out = tmp_path / "doc.bin"
    with serve(node) as server, MediaClient("", retries=0) as client:
        result = client.download(_payload(server.url + "/blob"), out)
    assert out.read_bytes() == PLAIN and result.bytes_fetched == len(BLOB)


class BrokenApi:
    """A media API whose upload ticket or PUT answer is ``broken`` as each test says (the
    other answers are what the bundled origin says)."""

    def __init__(self, broken: str) -> None:
        self.broken = broken

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        status, headers, body = 200, [(b"x-upload-offset", b"0")], b""
        if scope["path"] == "/v1/media/upload/request":
            ticket = {"media_id": "m_1", "upload_url": "/v1/upload/m_1"}
            body = json.dumps({k: v for k, v in ticket.items() if k != self.broken}).encode()
        elif scope["method"] == "PUT":
            mismatch = b'{"error": "offset_mismatch"}'
            status, headers, body = {
                "no offset": (409, [], mismatch),
                "junk offset": (409, [(b"x-upload-offset", b"-5")], mismatch),
                "offset past the end": (409, [(b"x-upload-offset", b"99999")], mismatch),
                "a list": (200, [], b"[1]"),
                "html": (200, [], b"<html>"),
            }[self.broken]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), *headers]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize("broken", ["upload_url", "media_id", "no offset", "junk offset",
                                    "offset past the end", "a list", "html"])
def test_an_api_answer_the_upload_cannot_use_is_a_client_error(tmp_path: Path,
                                                               broken: str) -> None:
    """Not a KeyError, ValueError or AttributeError (a traceback from the CLI)."""
    media = tmp_path / "doc.pdf"
    media.write_bytes(PLAIN)
    with serve(BrokenApi(broken)) as server, \
            MediaClient(server.url, token="t", retries=1, retry_backoff=0.0) as client, \
            pytest.raises(ClientError) as refused:
        client.upload(media)
    assert refused.value.error == "bad_response", refused.value


BIG_PLAIN = random.Random(12).randbytes(24 * 1024**2 + 12345)
BIG_BLOB, BIG_RESULT = crypto.encrypt_bytes(BIG_PLAIN, KEY, "video")


class RangeNode:
    """Serves ``BIG_BLOB`` with Range (206), with byte ``flip`` of the blob flipped if set.
    In the test's process: it sends small pieces, so what tracemalloc sees is the client's."""

    def __init__(self, flip: int | None = None) -> None:
        blob = bytearray(BIG_BLOB)
        if flip is not None:
            blob[flip] ^= 1
        self.blob = bytes(blob)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        spec = dict(scope["headers"])[b"range"].decode().removeprefix("bytes=")
        first, _, last = spec.partition("-")
        start, end = int(first), int(last) if last else len(self.blob) - 1
        await send({"type": "http.response.start", "status": 206, "headers": [
            (b"content-length", str(end + 1 - start).encode()),
            (b"content-range", f"bytes {start}-{end}/{len(self.blob)}".encode())]})
        for at in range(start, end + 1, 1 << 18):  # (in pieces: the test measures the client)
            piece = self.blob[at:min(at + (1 << 18), end + 1)]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _big_payload(url: str) -> dict[str, Any]:
    return {**_payload(url), "type": "video", "file_sha256": BIG_RESULT.plain_sha256,
            "file_enc_sha256": BIG_RESULT.enc_sha256, "file_length": len(BIG_PLAIN),
            "chunk_macs": base64.b64encode(BIG_RESULT.chunk_macs).decode()}


def test_a_large_range_is_decrypted_in_windows_not_held_whole(tmp_path: Path) -> None:
    """The range, its plaintext and their copies were all in memory at once (~5x the range:
    ~290 MB for a 60 MB one); now a window of chunks at a time."""
    out = tmp_path / "clip.mp4"
    start, end = 100_000, len(BIG_PLAIN) - 5  # ~24 MiB, ending inside the final chunk
    with serve(RangeNode()) as server, MediaClient("", retries=0) as client:
        tracemalloc.start()
        try:
            result = client.download(_big_payload(server.url + "/v"), out,
                                     byte_range=(start, end))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert out.read_bytes() == BIG_PLAIN[start:end + 1] and result.bytes_written == end - start + 1
    assert peak < end - start, f"{peak / 2**20:.1f} MiB held for a 24 MiB range"  # (~16)


def test_a_bad_chunk_late_in_a_large_range_leaves_nothing(tmp_path: Path) -> None:
    """(Windows before the bad chunk were written to the part file, which is dropped.)"""
    out = tmp_path / "out" / "clip.mp4"
    out.parent.mkdir()
    with serve(RangeNode(flip=len(BIG_BLOB) - 200_000)) as server, \
            MediaClient("", retries=0) as client, \
            pytest.raises(IntegrityError, match="failed its MAC check"):
        client.download(_big_payload(server.url + "/v"), out, byte_range=(0, len(BIG_PLAIN) - 1))
    assert list(out.parent.iterdir()) == []


class DrippingNode:
    """Serves ``BLOB`` a byte at a time, ``gap`` seconds apart: each read comes within any
    read timeout, the download never ends. Counts the requests."""

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.requests = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.requests += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(BLOB)).encode())]})
        for byte in BLOB:
            await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
            await asyncio.sleep(self.gap)


def test_a_download_that_stalls_is_given_up(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A body slower than the floor (`fetching.STALL_BYTES` per `STALL_WINDOW`) ends the
    attempt, resumed as a cut one is, and the download fails once the retries are spent."""
    monkeypatch.setattr(fetching, "STALL_WINDOW", 0.5)
    monkeypatch.setattr(fetching, "STALL_BYTES", 100)
    node = DrippingNode(gap=0.05)  # ~20 bytes a second, each read well within the timeout
    out = tmp_path / "doc.bin"
    with serve(node) as server, MediaClient("", retries=2, retry_backoff=0.0) as client:
        started = time.monotonic()
        with pytest.raises(ClientError, match="stalled"):
            client.download(_payload(server.url + "/blob"), out)
        took = time.monotonic() - started
        node.gap = 0.0  # (the server's handlers end soon)
    assert node.requests == 3  # the first attempt and two resumptions
    assert took < 10  # three windows of 0.5 s, not the ~60 s the dripping body takes
    assert not out.exists()


def test_a_download_stopped_by_sigterm_leaves_no_temporary_file(tmp_path: Path) -> None:
    """`edgeproxy download` told to stop (SIGTERM, as a service manager or `timeout` does)
    removes its hidden blob and part files beside --out, as Ctrl-C does."""
    node = DrippingNode(gap=0.05)
    payload = tmp_path / "payload.json"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with serve(node) as server:
        payload.write_text(json.dumps(_payload(server.url + "/blob")))
        proc = subprocess.Popen([sys.executable, "-m", "edgeproxy", "download", str(payload),
                                 "--out", str(out_dir / "doc.bin")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not list(out_dir.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)  # until the download has made its files
        assert list(out_dir.iterdir()), "the download never started"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
        node.gap = 0.0
    assert proc.returncode != 0
    assert list(out_dir.iterdir()) == []
