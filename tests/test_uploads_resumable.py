"""Resumable uploads over real sockets: the seed's X-Upload-Offset protocol, tus 1.0.0 by hand
and with the tus project's Python client (tuspy), bodies cut off mid-way by a raw socket or a
proxy, resume after an origin restart, expiry and cleanup, and the client/CLI resuming alone."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient

from edgeproxy import crypto
from edgeproxy.client import MediaClient
from tests.proxies import CuttingProxy
from tests.servers import free_port
from tests.test_origin import Clock, Origin, assert_not_served, error_of, make_blob, run_origin, sha

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    with run_origin(tmp_path) as o:
        yield o


def target(upload_url: str) -> str:
    """Path and query of a signed upload URL."""
    return httpx.URL(upload_url).raw_path.decode()


def staged(o: Origin, media_id: str) -> bytes:
    return (o.root / "staging" / f"{media_id}.part").read_bytes()


def head_offset(o: Origin, url: str, **headers: str) -> int:
    r = o.http.head(target(url), headers=headers)
    assert r.status_code == 200, r.status_code
    assert r.headers["x-upload-offset"] == r.headers["upload-offset"]
    return int(r.headers["upload-offset"])


def wait_offset(o: Origin, url: str, want: int) -> None:
    """The server records a cut-off body's bytes when it notices the disconnect: wait for it."""
    deadline = time.monotonic() + 5
    while (got := head_offset(o, url)) != want:
        assert time.monotonic() < deadline, f"offset stayed {got}, expected {want}"
        time.sleep(0.02)


def send_then_vanish(url: str, head: str, body: bytes) -> None:
    """Send a request head and only ``body`` (less than its Content-Length), then close."""
    u = httpx.URL(url)
    assert u.port is not None
    with socket.create_connection((u.host, u.port), timeout=5) as s:
        s.sendall(head.encode() + body)
        time.sleep(0.2)  # the server has read the bytes; then the client is gone


def tus_create(o: Origin, blob: bytes, *, filetype: str = "video/mp4",
               **extra: str) -> httpx.Response:  # fmt: skip
    meta = {"filetype": filetype, "sha256": sha(blob), **extra}
    encoded = ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())
    return o.http.post("/v1/tus", headers={**TUS, "Upload-Length": str(len(blob)),
                                           "Upload-Metadata": encoded})  # fmt: skip


def patch(o: Origin, url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    return o.http.patch(target(url), content=data, headers={
        **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
        **headers})  # fmt: skip


# --- the seed's protocol ---------------------------------------------------------------------


def test_seed_protocol_head_put_with_offset_and_409(origin: Origin) -> None:
    blob = make_blob(20_000)  # ~320 KiB
    ticket = origin.request(blob)
    url, media_id = ticket["upload_url"], ticket["media_id"]
    assert "resumable_until" in ticket
    assert head_offset(origin, url) == 0

    r = origin.http.put(target(url), content=blob[:100_000], headers={"X-Upload-Offset": "0"})
    assert r.status_code == 200
    assert r.json() == {"media_id": media_id, "received": 100_000, "complete": False}
    assert r.headers["x-upload-offset"] == "100000"
    assert head_offset(origin, url) == 100_000

    for wrong in (0, 99_999, 100_001, len(blob)):
        r = origin.http.put(target(url), content=blob[wrong:], headers={"X-Upload-Offset":
                                                                        str(wrong)})  # fmt: skip
        assert r.status_code == 409 and error_of(r) == "offset_mismatch"
        assert r.json()["offset"] == 100_000 and r.headers["x-upload-offset"] == "100000"
        assert staged(origin, media_id) == blob[:100_000]  # nothing changed
    r = origin.http.put(target(url), content=b"x", headers={"X-Upload-Offset": "soon"})
    assert r.status_code == 400 and staged(origin, media_id) == blob[:100_000]
    # More than what is still expected is refused from the Content-Length, before the body.
    r = origin.http.put(target(url), content=blob[100_000:] + b"!",
                        headers={"X-Upload-Offset": "100000"})  # fmt: skip
    assert r.status_code == 413 and error_of(r) == "too_large"
    assert staged(origin, media_id) == blob[:100_000]

    r = origin.http.put(target(url), content=blob[100_000:], headers={"X-Upload-Offset": "100000"})
    assert r.status_code == 200 and r.json()["complete"] is True
    assert head_offset(origin, url) == len(blob)
    assert origin.confirm(media_id, sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob
    assert head_offset(origin, url) == len(blob)  # a committed upload still says where it is


def test_cut_off_put_keeps_every_byte_and_resumes(origin: Origin) -> None:
    blob = make_blob(5000)  # 80 KiB
    ticket = origin.request(blob)
    url, media_id = ticket["upload_url"], ticket["media_id"]
    assert origin.http.put(target(url), content=blob[:10_000],
                           headers={"X-Upload-Offset": "0"}).status_code == 200  # fmt: skip
    rest = len(blob) - 10_000
    send_then_vanish(url, f"PUT {target(url)} HTTP/1.1\r\nHost: x\r\nX-Upload-Offset: 10000\r\n"
                          f"Content-Length: {rest}\r\n\r\n", blob[10_000:40_000])  # fmt: skip
    wait_offset(origin, url, 40_000)
    assert staged(origin, media_id) == blob[:40_000]
    r = origin.confirm(media_id, sha(blob))
    assert r.status_code == 409 and error_of(r) == "upload_incomplete"
    assert_not_served(origin, blob)
    r = origin.http.put(target(url), content=blob[40_000:], headers={"X-Upload-Offset": "40000"})
    assert r.json()["complete"] is True
    assert origin.confirm(media_id, sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_partial_upload_survives_a_restart(tmp_path: Path) -> None:
    blob, port = make_blob(3000), free_port()
    with run_origin(tmp_path, port=port) as o:
        ticket = o.request(blob)
        url = ticket["upload_url"]
        o.http.put(target(url), content=blob[:20_000], headers={"X-Upload-Offset": "0"})
    with run_origin(tmp_path, port=port) as o:
        assert head_offset(o, url) == 20_000
        assert staged(o, ticket["media_id"]) == blob[:20_000]
        r = patch(o, url, 20_000, blob[20_000:])  # tus finishes what the seed protocol began
        assert r.status_code == 204 and r.headers["upload-offset"] == str(len(blob))
        assert o.confirm(ticket["media_id"], sha(blob)).status_code == 200


def test_started_upload_outlives_its_url_but_not_its_expiry(tmp_path: Path) -> None:
    clock = Clock()
    with run_origin(tmp_path, clock) as o:
        blob = make_blob(100)
        started, idle = o.request(blob), o.request(blob)
        o.http.put(target(started["upload_url"]), content=blob[:64],
                   headers={"X-Upload-Offset": "0"})  # fmt: skip
        clock.now += o.config.origin.upload_url_ttl + 10  # both URLs expired
        assert head_offset(o, started["upload_url"]) == 64  # started: still resumable
        r = o.http.head(target(idle["upload_url"]))
        assert r.status_code == 410  # never started: gone with its URL
        assert o.put(idle["upload_url"], blob).status_code == 410

        clock.now += o.config.origin.upload_expiry  # past Upload-Expires
        r = o.http.put(target(started["upload_url"]), content=blob[64:],
                       headers={"X-Upload-Offset": "64"})  # fmt: skip
        assert r.status_code == 410 and error_of(r) == "upload_expired"
        assert staged(o, started["media_id"]) == blob[:64]  # until the sweeper runs
    # A restart sweeps what expired (beside the requests): staging removed, both uploads
    # failed as expired.
    with run_origin(tmp_path, clock) as o:
        deadline = time.monotonic() + 5
        while o.staging():
            assert time.monotonic() < deadline, o.staging()
            time.sleep(0.05)
        for ticket in (started, idle):
            r = o.confirm(ticket["media_id"], sha(blob))
            assert r.status_code == 410 and r.json()["reason"] == "expired"
        # (the sweep counts them as it ends, after its files are gone: a moment later
        # under load)
        line = 'edgeproxy_origin_uploads_total{result="expired"} 2.0'
        while line not in (metrics := o.http.get("/metrics").text):
            assert time.monotonic() < deadline + 5, metrics
            time.sleep(0.05)


def test_background_sweep_removes_expired_uploads(tmp_path: Path) -> None:
    clock = Clock()
    with run_origin(tmp_path, clock, env={"EDGEPROXY_ORIGIN__CLEANUP_INTERVAL": "1"}) as o:
        blob = make_blob(100)
        ticket = o.request(blob)
        o.http.put(target(ticket["upload_url"]), content=blob[:64],
                   headers={"X-Upload-Offset": "0"})  # fmt: skip
        orphan = o.root / "staging" / "pp-0123456789abcdef.part"  # left by a crash
        orphan.write_bytes(b"half a photo")
        os.utime(orphan, (clock.now - 2 * 86400, clock.now - 2 * 86400))
        assert sorted(o.staging()) == sorted([f"{ticket['media_id']}.part", orphan.name])
        clock.now += o.config.origin.upload_expiry + 1
        deadline = time.monotonic() + 5
        while o.staging():
            assert time.monotonic() < deadline, o.staging()
            time.sleep(0.05)
        r = o.confirm(ticket["media_id"], sha(blob))
        assert r.status_code == 410 and r.json()["reason"] == "expired"


# --- tus by hand -----------------------------------------------------------------------------


def test_tus_discovery_and_creation(origin: Origin) -> None:
    for path in ("/v1/tus", "/v1/upload/m_whatever123"):
        r = httpx.options(origin.url + path)  # no token: discovery is public
        assert r.status_code == 204
        assert r.headers["tus-version"] == "1.0.0" and r.headers["tus-resumable"] == "1.0.0"
        assert set(r.headers["tus-extension"].split(",")) == {
            "creation", "creation-with-upload", "expiration", "checksum", "termination"}
        assert int(r.headers["tus-max-size"]) == crypto.enc_length(100 * 1024**2)
        assert "sha1" in r.headers["tus-checksum-algorithm"].split(",")

    blob = make_blob(10)
    r = tus_create(origin, blob)
    assert r.status_code == 201
    location = r.headers["location"]
    assert re.fullmatch(rf"{origin.url}/v1/upload/m_[\w-]+\?expires=\d+&size={len(blob)}&sig=\w+",
                        location)  # fmt: skip
    assert r.headers["tus-resumable"] == "1.0.0"
    assert r.headers["upload-expires"].endswith(" GMT")
    assert r.json()["media_id"] == r.headers["x-media-id"]
    h = origin.http.head(target(location), headers=TUS)
    assert h.status_code == 200 and h.headers["upload-offset"] == "0"
    assert h.headers["upload-length"] == str(len(blob)) and h.headers["cache-control"] == "no-store"
    assert h.headers["upload-expires"] == r.headers["upload-expires"]


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({"Tus-Resumable": "0.2.2"}, 412, "unsupported_tus_version"),
        ({"Tus-Resumable": None}, 412, "unsupported_tus_version"),
        ({"Authorization": None}, 401, "unauthorized"),
        ({"Upload-Length": None}, 400, "bad_request"),
        ({"Upload-Length": "-1"}, 400, "bad_request"),
        ({"Upload-Defer-Length": "1"}, 400, "defer_length_unsupported"),
        ({"Upload-Length": str(crypto.enc_length(100 * 1024**2) + 1)}, 413, "too_large"),
        ({"Upload-Metadata": "sha256 " + base64.b64encode(b"a" * 64).decode()}, 400,
         "bad_request"),
        ({"Upload-Metadata": "filetype !!!"}, 400, "bad_metadata"),
        # tus 1.0.0 Upload-Metadata: "All keys MUST be unique" (the last one won, over a
        # refused type given first)
        ({"Upload-Metadata": "filetype " + base64.b64encode(b"application/x-sh").decode()
          + ",sha256 " + base64.b64encode(b"a" * 64).decode()
          + ",filetype " + base64.b64encode(b"video/mp4").decode()}, 400, "bad_metadata"),
        ({"Upload-Metadata": "filetype " + base64.b64encode(b"application/x-sh").decode()
          + ",sha256 " + base64.b64encode(b"a" * 64).decode()}, 415, "unsupported_media_type"),
        ({"Upload-Metadata": "filetype " + base64.b64encode(b"video/mp4").decode()
          + ",sha256 " + base64.b64encode(b"a" * 64).decode()
          + ",filename " + base64.b64encode(b"movie.mp4.exe").decode()}, 415,
         "unsupported_media_type"),
    ],
)  # fmt: skip
def test_tus_creation_refusals_store_nothing(origin: Origin, headers: dict[str, str | None],
                                             status: int, error: str) -> None:  # fmt: skip
    base = {**TUS, "Upload-Length": "96", "Authorization": origin.http.headers["authorization"],
            "Upload-Metadata": "filetype " + base64.b64encode(b"image/png").decode()
            + ",sha256 " + base64.b64encode(b"a" * 64).decode()}  # fmt: skip
    for k, v in headers.items():
        if v is None:
            base.pop(k, None)
        else:
            base[k] = v
    r = httpx.post(origin.url + "/v1/tus", headers=base)
    assert r.status_code == status, r.text
    assert error_of(r) == error
    if status == 412:
        assert r.headers["tus-version"] == "1.0.0"
    assert origin.staging() == [] and origin.blobs() == []
    assert 'edgeproxy_origin_uploads_total{result="created"}' not in origin.http.get(
        "/metrics").text  # no upload was recorded


def test_tus_patch_checksum_offset_and_termination(origin: Origin) -> None:
    blob = make_blob(9000)  # 144 KiB
    url, media_id = (r := tus_create(origin, blob)).headers["location"], r.json()["media_id"]

    def sha1(data: bytes) -> str:
        return "sha1 " + base64.b64encode(hashlib.sha1(data).digest()).decode()

    r = patch(origin, url, 0, blob[:50_000], **{"Upload-Checksum": sha1(blob[:50_000])})
    assert r.status_code == 204 and r.headers["upload-offset"] == "50000"
    assert r.headers["tus-resumable"] == "1.0.0" and "upload-expires" in r.headers

    # A chunk whose checksum does not match is discarded: 460, offset and bytes unchanged.
    r = patch(origin, url, 50_000, blob[50_000:90_000], **{"Upload-Checksum": sha1(b"other")})
    assert r.status_code == 460 and error_of(r) == "checksum_mismatch"
    assert head_offset(origin, url) == 50_000 and staged(origin, media_id) == blob[:50_000]
    sha256 = "sha256 " + base64.b64encode(hashlib.sha256(blob[50_000:90_000]).digest()).decode()
    r = patch(origin, url, 50_000, blob[50_000:90_000], **{"Upload-Checksum": sha256})
    assert r.status_code == 204 and r.headers["upload-offset"] == "90000"

    r = patch(origin, url, 90_000, b"x", **{"Upload-Checksum": "crc32 AAAA"})
    assert r.status_code == 400 and error_of(r) == "unsupported_checksum"
    for no_digest in ("sha1", "sha1 AAAA", "sha256 " + sha1(b"x")[5:]):
        r = patch(origin, url, 90_000, b"x", **{"Upload-Checksum": no_digest})
        assert r.status_code == 400 and error_of(r) == "bad_checksum", (no_digest, r.text)
    r = patch(origin, url, 12, blob[12:])
    assert r.status_code == 409 and r.headers["upload-offset"] == "90000"
    r = patch(origin, url, 90_000, blob[90_000:], **{"Content-Type": "application/octet-stream"})
    assert r.status_code == 415
    r = patch(origin, url, 90_000, blob[90_000:], **{"Tus-Resumable": "2.0.0"})
    assert r.status_code == 412
    r = patch(origin, url, 90_000, blob[90_000:] + b"!")
    assert r.status_code == 413
    assert head_offset(origin, url) == 90_000 and staged(origin, media_id) == blob[:90_000]

    # Termination: the bytes go, the upload is over.
    r = origin.http.delete(target(url), headers=TUS)
    assert r.status_code == 204
    assert origin.staging() == []
    assert origin.http.head(target(url), headers=TUS).status_code == 410
    assert patch(origin, url, 90_000, blob[90_000:]).status_code == 410
    r = origin.confirm(media_id, sha(blob))
    assert r.status_code == 410 and error_of(r) == "upload_terminated"
    assert origin.http.delete(target(url), headers=TUS).status_code == 410


def test_tus_cut_off_patch_keeps_bytes(origin: Origin) -> None:
    blob = make_blob(6000)
    url, media_id = (r := tus_create(origin, blob)).headers["location"], r.json()["media_id"]
    send_then_vanish(url, f"PATCH {target(url)} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                          "Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
                          f"Content-Length: {len(blob)}\r\n\r\n", blob[:33_333])  # fmt: skip
    wait_offset(origin, url, 33_333)
    assert staged(origin, media_id) == blob[:33_333]
    assert patch(origin, url, 33_333, blob[33_333:]).status_code == 204
    assert origin.confirm(media_id, sha(blob)).status_code == 200


def test_upload_url_with_someone_elses_token_is_403(origin: Origin) -> None:
    blob = make_blob(10)
    url = origin.request(blob)["upload_url"]
    bob = origin.auth("bob")
    for method in ("HEAD", "PUT", "DELETE"):
        r = httpx.request(method, origin.url + target(url), headers=bob, content=b"")
        assert r.status_code == 403, method
    r = httpx.put(origin.url + target(url), headers={"Authorization": "Bearer nope"}, content=b"")
    assert r.status_code == 401
    # Without any token the signed URL is the credential.
    assert httpx.put(origin.url + target(url), content=blob).json()["complete"] is True


# --- a proxy that drops connections mid-body -------------------------------------------------


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Origin, CuttingProxy]]:
    port = free_port()
    proxy = CuttingProxy(port, cut_after=150_000, cuts=2)
    # Upload URLs name the proxy, so every byte of the body goes through it.
    with run_origin(tmp_path, port=port, env={"EDGEPROXY_ORIGIN__PUBLIC_URL": proxy.url}) as o:
        yield o, proxy
    proxy.close()


def received_bytes(o: Origin) -> float:
    m = re.search(r"^edgeproxy_origin_upload_received_bytes_total (\S+)$",
                  o.http.get("/metrics").text, re.M)  # fmt: skip
    return float(m.group(1)) if m else 0.0


def test_tuspy_resumes_after_dropped_connections(proxied: tuple[Origin, CuttingProxy]) -> None:
    o, proxy = proxied
    blob = make_blob(30_000)  # 480 KiB, sent as 2 PATCHes of 256 KiB
    client = TusClient(proxy.url + "/v1/tus", headers=dict(o.auth("alice")))
    uploader = client.uploader(file_stream=io.BytesIO(blob), chunk_size=256 * 1024,
                               metadata={"filetype": "video/mp4", "sha256": sha(blob)},
                               upload_checksum=True, retries=5, retry_delay=0)  # fmt: skip
    uploader.upload()
    assert proxy.cut == 2  # two PATCHes really were cut off
    assert uploader.url is not None
    media_id = httpx.URL(uploader.url).path.rsplit("/", 1)[1]
    assert o.confirm(media_id, sha(blob)).status_code == 200
    assert o.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_tuspy_resumes_after_an_origin_restart(tmp_path: Path) -> None:
    blob, port = make_blob(40_000), free_port()
    with run_origin(tmp_path, port=port) as o:
        headers = dict(o.auth("alice"))
        client = TusClient(o.url + "/v1/tus", headers=headers)
        first = client.uploader(file_stream=io.BytesIO(blob), chunk_size=100_000,
                                metadata={"filetype": "audio/ogg", "sha256": sha(blob)})
        first.upload(stop_at=200_000)  # two chunks, then the app "crashes"
        url = first.url
    with run_origin(tmp_path, port=port) as o:
        # A new process resumes from the URL it stored: tuspy HEADs the offset.
        second = TusClient(o.url + "/v1/tus", headers=headers).uploader(
            file_stream=io.BytesIO(blob), url=url, chunk_size=100_000)
        assert second.offset == 200_000
        second.upload()
        assert url is not None
        media_id = httpx.URL(url).path.rsplit("/", 1)[1]
        assert o.confirm(media_id, sha(blob)).status_code == 200
        assert o.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_client_resumes_a_dropped_put(proxied: tuple[Origin, CuttingProxy],
                                      tmp_path: Path) -> None:  # fmt: skip
    o, proxy = proxied
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(400_000))
    with MediaClient(o.url, token=o.auth("alice")["Authorization"][7:],
                     retry_backoff=0.05) as client:  # fmt: skip
        payload = client.upload(src)
    assert proxy.cut == 2
    blob_size = crypto.enc_length(400_000)
    # Resumed, not restarted: every byte was stored exactly once across the three PUTs.
    assert received_bytes(o) == blob_size
    blob = o.http.get(f"/v/t1/{payload['file_enc_sha256']}").content
    assert len(blob) == blob_size and sha(blob) == payload["file_enc_sha256"]


def test_client_survives_a_lost_answer(proxied: tuple[Origin, CuttingProxy],
                                       tmp_path: Path) -> None:  # fmt: skip
    # Every byte arrives, the origin answers, and the answer is lost with the connection: the
    # client must find out from HEAD that it is done, not fail on "already uploaded".
    o, proxy = proxied
    proxy.drop_responses, proxy.cuts = True, 1
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(400_000))
    with MediaClient(o.url, token=o.auth("alice")["Authorization"][7:],
                     retry_backoff=0.05) as client:  # fmt: skip
        payload = client.upload(src)
    assert proxy.cut == 1
    assert received_bytes(o) == crypto.enc_length(400_000)  # sent once, not again
    assert sha(o.http.get(f"/v/t1/{payload['file_enc_sha256']}").content) == \
        payload["file_enc_sha256"]


def test_client_gives_up_after_its_retries(proxied: tuple[Origin, CuttingProxy],
                                           tmp_path: Path) -> None:  # fmt: skip
    o, proxy = proxied
    proxy.cuts, proxy.cut_after = 100, 1000  # every PUT dies a few hundred body bytes in
    src = tmp_path / "clip.mp4"
    src.write_bytes(os.urandom(400_000))
    from edgeproxy.errors import ClientError

    with (MediaClient(o.url, token=o.auth("alice")["Authorization"][7:], retries=2,
                      retry_backoff=0.01) as client,
          pytest.raises(ClientError, match="gave up after 3 attempts") as failed):  # fmt: skip
        client.upload(src)
    assert proxy.cut == 3
    # the message may name the upload, never its signed URL (whoever reads it could write)
    assert "sig=" not in str(failed.value) and "?expires=" not in str(failed.value)
    assert 0 < received_bytes(o) < 3000  # each attempt resumed where the last one ended


def test_cli_upload_resumes(proxied: tuple[Origin, CuttingProxy], tmp_path: Path) -> None:
    o, proxy = proxied
    src = tmp_path / "voice.ogg"
    src.write_bytes(os.urandom(300_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env["EDGEPROXY_TOKEN"] = o.auth("alice")["Authorization"][7:]
    proc = subprocess.run([sys.executable, "-m", "edgeproxy", "upload", str(src), "--api", o.url],
                          env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proxy.cut >= 1
    assert received_bytes(o) == crypto.enc_length(300_000)
