"""The origin over an S3-compatible bucket (moto server on a loopback port): committed blobs
under ``blobs/<sha256>``, direct presigned uploads into ``staging/<media_id>``, store-once,
expiry sweeps, and a private bucket that answers nothing unsigned."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edgeproxy import s3 as s3_settings
from edgeproxy.client import MediaClient
from edgeproxy.origin.auth import mint_token
from tests.objectstore import S3Endpoint, moto_s3
from tests.test_origin import Origin, error_of, make_blob, run_origin, sha


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    with moto_s3(tmp_path_factory.mktemp("moto")) as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3: S3Endpoint) -> str:
    return s3.new_bucket()


@pytest.fixture
def origin(tmp_path: Path, s3: S3Endpoint, bucket: str) -> Iterator[Origin]:
    env = {**s3.env(), "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/edge"}
    with run_origin(tmp_path, env=env) as o:
        yield o


def direct_put(ticket: dict[str, Any], blob: bytes) -> httpx.Response:
    return httpx.put(ticket["upload_url"], content=blob, headers=ticket["upload_headers"])


def test_direct_upload_goes_to_the_bucket_and_is_served(origin: Origin, s3: S3Endpoint,
                                                        bucket: str) -> None:  # fmt: skip
    blob = make_blob(64)
    ticket = origin.request(blob)
    url = httpx.URL(ticket["upload_url"])
    # A presigned PUT of the staging key, straight to the store, bound to the declared hash.
    assert str(url).startswith(f"{s3.url}/{bucket}/edge/staging/{ticket['media_id']}?")
    assert url.params["X-Amz-Expires"] == "300"
    assert "x-amz-checksum-sha256" in url.params["X-Amz-SignedHeaders"].split(";")
    assert ticket["upload_method"] == "direct"
    r = direct_put(ticket, blob)
    assert r.status_code == 200, r.text
    assert s3.keys(bucket) == [f"edge/staging/{ticket['media_id']}"]

    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 200, r.text
    # Copied to the content-addressed key; the staging object is gone.
    assert s3.keys(bucket) == [f"edge/blobs/{sha(blob)}"]
    r = origin.http.get(f"/v/t1/{sha(blob)}", headers={"range": "bytes=10-29"})
    assert r.status_code == 206 and r.content == blob[10:30]
    assert r.headers["content-range"] == f"bytes 10-29/{len(blob)}"
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_same_bytes_are_stored_once(origin: Origin, s3: S3Endpoint, bucket: str) -> None:
    blob = make_blob(8)
    for _ in range(2):
        ticket = origin.request(blob)
        assert direct_put(ticket, blob).status_code == 200
        assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    assert s3.keys(bucket) == [f"edge/blobs/{sha(blob)}"]
    metrics = origin.http.get("/metrics").text
    assert 'edgeproxy_origin_uploads_total{result="deduplicated"} 1.0' in metrics


def test_tampered_direct_upload_is_never_committed(origin: Origin, s3: S3Endpoint,
                                                   bucket: str) -> None:  # fmt: skip
    blob = make_blob(8)
    ticket = origin.request(blob)
    other = blob[:16] + bytes(len(blob) - 16)  # same size, same header, other bytes
    r = direct_put(ticket, other)
    if r.status_code == 200:
        # moto does not verify x-amz-checksum-sha256 (AWS S3 and MinIO answer 400
        # BadDigest); the confirm's store-side SHA-256 of the copy catches it instead.
        r = origin.confirm(ticket["media_id"], sha(blob))
        assert r.status_code == 422 and r.json()["error"] == "hash_mismatch"
    else:
        assert r.status_code == 400 and "BadDigest" in r.text
    assert s3.keys(bucket) == []
    assert origin.http.get(f"/v/t1/{sha(blob)}").status_code == 404


def test_confirm_checks_size_and_header(origin: Origin, s3: S3Endpoint, bucket: str) -> None:
    blob = make_blob(8)
    ticket = origin.request(blob)
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 409 and r.json()["error"] == "upload_incomplete"
    assert direct_put(ticket, blob[:-1]).status_code == 200
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 422 and r.json()["error"] == "size_mismatch"
    bad = b"NOTMEDIA" + blob[8:]
    ticket = origin.request(bad)
    assert direct_put(ticket, bad).status_code == 200
    r = origin.confirm(ticket["media_id"], sha(bad))
    assert r.status_code == 422 and r.json()["error"] == "bad_format"
    assert s3.keys(bucket) == []


def test_expired_direct_upload_leaves_no_staging_object(origin: Origin, s3: S3Endpoint,
                                                        bucket: str) -> None:  # fmt: skip
    blob = make_blob(8)
    ticket = origin.request(blob)
    assert direct_put(ticket, blob).status_code == 200
    origin.clock.now += 2 * 300 + 1  # the URL's TTL, then the time left to confirm
    assert asyncio.run(origin.app.state.origin.sweep()) == 1
    assert s3.keys(bucket) == []
    r = origin.confirm(ticket["media_id"], sha(blob))
    assert r.status_code == 410 and r.json()["error"] == "upload_expired"


def test_private_bucket_refuses_unsigned_reads(origin: Origin, s3: S3Endpoint,
                                               bucket: str) -> None:  # fmt: skip
    blob = origin_upload_direct(origin, make_blob(4))
    r = httpx.get(f"{s3.url}/{bucket}/edge/blobs/{sha(blob)}")
    assert r.status_code == 403
    signed = s3.client().generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": f"edge/blobs/{sha(blob)}"})
    assert httpx.get(signed).content == blob


def test_resumed_upload_through_the_origin_is_committed_to_the_bucket(
        origin: Origin, s3: S3Endpoint, bucket: str) -> None:  # fmt: skip
    blob = make_blob(64)
    r = origin.http.post("/v1/tus", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(len(blob)),
        "Upload-Metadata": "filetype aW1hZ2UvanBlZw==,sha256 " + _b64(sha(blob))})
    assert r.status_code == 201, r.text
    location = httpx.URL(r.headers["location"]).raw_path.decode()
    half = len(blob) // 2
    steps = [(0, blob[:half], blob[:half], 204),
             (half, blob[half:], b"tampered", 460),  # Upload-Checksum mismatch: dropped
             (half, blob[half:], blob[half:], 204)]
    for offset, part, summed, status in steps:
        digest = base64.b64encode(hashlib.sha1(summed).digest()).decode()
        r = origin.http.patch(location, content=part, headers={
            "Tus-Resumable": "1.0.0", "Upload-Offset": str(offset),
            "Upload-Checksum": f"sha1 {digest}",
            "Content-Type": "application/offset+octet-stream"})
        assert r.status_code == status, r.text
    assert origin.confirm(r.headers.get("x-media-id") or _media_id(location),
                          sha(blob)).status_code == 200
    assert s3.keys(bucket) == [f"edge/blobs/{sha(blob)}"]


def test_client_library_follows_the_presigned_url(origin: Origin, s3: S3Endpoint,
                                                  bucket: str, tmp_path: Path) -> None:  # fmt: skip
    photo = tmp_path / "notes.pdf"
    photo.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 100)
    token = mint_token(origin.config.auth.jwt_secret, "alice")
    with MediaClient(origin.url, token=token) as client:
        payload = client.upload(photo, mimetype="application/pdf")
    assert s3.keys(bucket) == [f"edge/blobs/{payload['file_enc_sha256']}"]


# --- helpers ---------------------------------------------------------------------------------

def origin_upload_direct(origin: Origin, blob: bytes) -> bytes:
    ticket = origin.request(blob)
    assert direct_put(ticket, blob).status_code == 200
    assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    return blob


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _media_id(location: str) -> str:
    return location.split("/v1/upload/", 1)[1].split("?", 1)[0]


# --- resumable uploads through the origin: S3 multipart ------------------------------------

MIB = 1024 * 1024


def multipart_uploads(s3: S3Endpoint, bucket: str) -> list[str]:
    return [u["Key"] for u in s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


def test_offset_protocol_resumes_into_multipart_parts(origin: Origin, s3: S3Endpoint,
                                                      bucket: str) -> None:  # fmt: skip
    blob = make_blob(11 * MIB // 16)  # three parts: 5 MiB, 5 MiB, and the rest
    ticket = origin.request(blob, upload_method="resumable")
    url, media_id = ticket["upload_url"], ticket["media_id"]
    assert url.startswith(origin.config.origin.base_url + "/v1/upload/")
    # 6 MiB arrive: one part uploaded, 1 MiB kept as a tail object; then 2 MiB more.
    for start, end in ((0, 6 * MIB), (6 * MIB, 8 * MIB)):
        r = origin.put(url, blob[start:end], headers={"X-Upload-Offset": str(start)})
        assert r.status_code == 200 and r.json()["received"] == end, r.text
    assert multipart_uploads(s3, bucket) == [f"edge/staging/{media_id}"]
    assert s3.keys(bucket) == [f"edge/staging/{media_id}.tail-{5 * MIB}"]
    r = origin.http.head(httpx.URL(url).raw_path.decode())
    assert r.headers["x-upload-offset"] == str(8 * MIB)
    r = origin.put(url, blob[8 * MIB:], headers={"X-Upload-Offset": str(8 * MIB)})
    assert r.status_code == 200 and r.json()["complete"] is True
    assert origin.confirm(media_id, sha(blob)).status_code == 200
    assert s3.keys(bucket) == [f"edge/blobs/{sha(blob)}"]
    assert multipart_uploads(s3, bucket) == []
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_lost_tail_resumes_from_what_the_bucket_holds(origin: Origin, s3: S3Endpoint,
                                                      bucket: str) -> None:  # fmt: skip
    blob = make_blob(7 * MIB // 16)
    ticket = origin.request(blob, upload_method="resumable")
    url, media_id = ticket["upload_url"], ticket["media_id"]
    assert origin.put(url, blob[:6 * MIB], headers={"X-Upload-Offset": "0"}).status_code == 200
    s3.client().delete_object(Bucket=bucket, Key=f"edge/staging/{media_id}.tail-{5 * MIB}")
    r = origin.put(url, blob[6 * MIB:], headers={"X-Upload-Offset": str(6 * MIB)})
    assert r.status_code == 409 and r.json()["offset"] == 5 * MIB  # the whole part survived
    r = origin.put(url, blob[5 * MIB:], headers={"X-Upload-Offset": str(5 * MIB)})
    assert r.status_code == 200 and r.json()["complete"] is True
    assert origin.confirm(media_id, sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_abandoned_multipart_upload_is_aborted(origin: Origin, s3: S3Endpoint,
                                               bucket: str) -> None:  # fmt: skip
    blob = make_blob(6 * MIB // 16)
    ticket = origin.request(blob, upload_method="resumable")
    r = origin.put(ticket["upload_url"], blob[:5 * MIB + 100], headers={"X-Upload-Offset": "0"})
    assert r.status_code == 200
    assert multipart_uploads(s3, bucket) and s3.keys(bucket)
    origin.clock.now += origin.config.origin.upload_expiry + 1
    assert asyncio.run(origin.app.state.origin.sweep()) == 1
    assert multipart_uploads(s3, bucket) == [] and s3.keys(bucket) == []


class _Relay:
    """A TCP relay to ``target`` on a loopback port that can stall (accept connections and
    relay nothing) or go down (refuse them), as a store that hangs or dies."""

    def __init__(self, target: str) -> None:
        self.target = httpx.URL(target)
        self.mode = "relay"
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.held: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if self.mode != "relay":
                self.held.append(client)  # accepted, never answered
                continue
            upstream = socket.create_connection((self.target.host, self.target.port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: Any, dst: Any) -> None:
        try:
            while self.mode == "relay" and (data := src.recv(65536)):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def close(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()


def test_a_store_that_stalls_is_504_and_one_that_is_down_502_never_500(
        tmp_path: Path, s3: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore waits 60 s per attempt by default, and its errors fell through to a 500: a
    stalled store held a confirm for minutes, a dead one answered 500 (found from outside).
    The store's calls are bounded (shortened here), and its failures are the gateway's."""

    monkeypatch.setattr(s3_settings, "S3_CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(s3_settings, "S3_READ_TIMEOUT", 0.5)
    relay = _Relay(s3.url)
    env = {**s3.env(), "EDGEPROXY_S3__ENDPOINT": relay.url,
           "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/edge"}
    try:
        with run_origin(tmp_path, env=env) as origin:
            blob = make_blob(8)
            ticket = origin.request(blob)
            assert direct_put(ticket, blob).status_code == 200
            assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
            assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob
            for mode, status, error in [("stall", 504, "gateway_timeout"),
                                        ("down", 502, "bad_gateway")]:
                relay.mode = mode
                if mode == "down":
                    relay.server.close()  # (nothing listens on the port any more)
                started = time.monotonic()
                r = origin.http.get(f"/v/t1/{sha(blob)}")
                assert (r.status_code, error_of(r)) == (status, error), (mode, r.text)
                assert r.headers["cache-control"] == "no-store"
                assert time.monotonic() - started < 8, mode
    finally:
        relay.close()


def test_an_origin_starts_while_its_store_stalls(
        tmp_path: Path, s3: S3Endpoint, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The start swept expired uploads and read the bucket's tier rules before serving: a
    store that stalled held the start for minutes (3 attempts of 20 s per call), then the
    sweep's error failed it (found from outside). Both now run beside the requests."""
    monkeypatch.setattr(s3_settings, "S3_CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(s3_settings, "S3_READ_TIMEOUT", 0.5)
    relay = _Relay(s3.url)
    relay.mode = "stall"
    env = {**s3.env(), "EDGEPROXY_S3__ENDPOINT": relay.url,
           "EDGEPROXY_ORIGIN__STORE": f"s3://{bucket}/edge"}
    started = time.monotonic()
    try:
        with run_origin(tmp_path, env=env) as origin:
            assert time.monotonic() - started < 5
            assert origin.http.get("/healthz").status_code == 200
            r = origin.http.get("/v/t1/" + "ab" * 32)  # (the database answers this one)
            assert (r.status_code, error_of(r)) == (404, "not_found")
            relay.mode = "relay"  # the store is back: uploads go through
            blob = make_blob(8)
            ticket = origin.request(blob)
            assert direct_put(ticket, blob).status_code == 200
            assert origin.confirm(ticket["media_id"], sha(blob)).status_code == 200
    finally:
        relay.close()
