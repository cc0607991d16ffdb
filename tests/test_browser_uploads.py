"""The media API from a browser: CORS on /v1 (preflight, exposed tus and upload headers), tus
creation-with-upload (by hand, resumed by tuspy, and with tus-js-client under Node), and the
upload-duration histogram behind the seed's "upload p99 (1MB) > 5s" alert."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient

from edgeproxy.config import load_config
from edgeproxy.errors import ConfigError
from edgeproxy.origin.auth import mint_token
from edgeproxy.origin.metrics import upload_size_class
from tests.test_origin import Clock, Origin, make_blob, run_origin, sha

APP = "https://app.example"
TUS = {"Tus-Resumable": "1.0.0"}
JS = Path(__file__).resolve().parent / "js"


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    env = {"EDGEPROXY_ORIGIN__CORS_ORIGINS": f"[{APP}, http://localhost:5173]"}
    with run_origin(tmp_path, env=env) as o:
        yield o


def metadata(blob: bytes, filetype: str = "video/mp4") -> str:
    meta = {"filetype": filetype, "sha256": sha(blob)}
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items())


def create_with_upload(o: Origin, blob: bytes, first: bytes, **headers: str) -> httpx.Response:
    return o.http.post("/v1/tus", content=first, headers={
        **TUS, "Upload-Length": str(len(blob)), "Upload-Metadata": metadata(blob),
        "Content-Type": "application/offset+octet-stream", **headers})  # fmt: skip


def target(url: str) -> str:
    return httpx.URL(url).raw_path.decode()


# --- CORS ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method", "headers"), [
    ("/v1/tus", "POST", "authorization, tus-resumable, upload-length, upload-metadata, "
                        "content-type"),
    ("/v1/media/upload/request", "POST", "authorization, content-type"),
    ("/v1/upload/m_0123456789", "PATCH", "tus-resumable, upload-offset, upload-checksum, "
                                         "content-type"),
    ("/v1/upload/m_0123456789", "PUT", "x-upload-offset, content-type"),
])  # fmt: skip
def test_preflight_is_answered_for_allowed_origins(origin: Origin, path: str, method: str,
                                                   headers: str) -> None:  # fmt: skip
    # Fetch standard, CORS protocol: the browser asks before any non-simple request.
    ask = {"Origin": APP, "Access-Control-Request-Method": method,
           "Access-Control-Request-Headers": headers}  # fmt: skip
    r = httpx.options(origin.url + path, headers=ask)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == APP
    assert method in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {h.strip() for h in headers.split(",")} <= allowed
    assert "access-control-allow-credentials" not in r.headers

    r = httpx.options(origin.url + path, headers=ask | {"Origin": "https://evil.example"})
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_responses_expose_the_tus_and_upload_headers(origin: Origin) -> None:
    blob = make_blob(100)
    r = create_with_upload(origin, blob, blob[:1000], Origin=APP)
    assert r.status_code == 201, r.text
    assert r.headers["access-control-allow-origin"] == APP
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"location", "upload-offset", "upload-length", "upload-expires", "tus-resumable",
            "tus-version", "tus-extension", "tus-max-size", "x-upload-offset",
            "x-media-id"} <= exposed  # fmt: skip
    # A tus discovery OPTIONS (no Access-Control-Request-Method) still reaches tus.
    r = httpx.options(origin.url + "/v1/tus", headers={"Origin": APP})
    assert r.status_code == 204 and r.headers["tus-version"] == "1.0.0"
    assert r.headers["access-control-allow-origin"] == APP
    # Blobs are for shields and edges: no CORS headers, no Vary: Origin splitting caches.
    r = origin.http.get("/healthz", headers={"Origin": APP})
    assert "access-control-allow-origin" not in r.headers and "vary" not in r.headers


def test_no_cors_unless_configured(tmp_path: Path) -> None:
    with run_origin(tmp_path) as o:
        r = httpx.options(o.url + "/v1/tus", headers={
            "Origin": APP, "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert "access-control-allow-origin" not in r.headers
    with pytest.raises(ConfigError, match=r"origin\.cors_origins\[0\]"):
        load_config(None, env={"EDGEPROXY_ORIGIN__CORS_ORIGINS": "[https://app.example/]"})


# --- tus creation-with-upload ----------------------------------------------------------------


def test_creation_with_upload_stores_the_body_as_the_first_bytes(origin: Origin) -> None:
    blob = make_blob(20_000)  # ~320 KiB
    r = httpx.options(origin.url + "/v1/tus")
    assert "creation-with-upload" in r.headers["tus-extension"].split(",")

    r = create_with_upload(origin, blob, blob[:100_000])
    assert r.status_code == 201, r.text
    assert r.headers["upload-offset"] == "100000"  # tus creation-with-upload: MUST be sent
    url = r.headers["location"]
    h = origin.http.head(target(url), headers=TUS)
    assert h.headers["upload-offset"] == "100000"
    # The rest with a normal PATCH; then the upload confirms as any other.
    p = origin.http.patch(target(url), content=blob[100_000:], headers={
        **TUS, "Upload-Offset": "100000", "Content-Type": "application/offset+octet-stream"})
    assert p.status_code == 204 and p.headers["upload-offset"] == str(len(blob))
    assert origin.confirm(r.json()["media_id"], sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def test_creation_with_the_whole_blob_and_with_an_empty_body(origin: Origin) -> None:
    blob = make_blob(50)
    r = create_with_upload(origin, blob, blob)
    assert r.status_code == 201 and r.headers["upload-offset"] == str(len(blob))
    assert origin.confirm(r.json()["media_id"], sha(blob)).status_code == 200

    other = make_blob(50)
    r = create_with_upload(origin, other, b"")
    assert r.status_code == 201 and r.headers["upload-offset"] == "0"
    # Without the offset content type a body is not upload data (plain creation).
    r = origin.http.post("/v1/tus", content=b"ignored", headers={
        **TUS, "Upload-Length": str(len(other)), "Upload-Metadata": metadata(other)})
    assert r.status_code == 201 and "upload-offset" not in r.headers


def test_creation_with_upload_refusals(origin: Origin) -> None:
    blob = make_blob(50)
    r = create_with_upload(origin, blob, blob + b"extra")
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    bad = "sha256 " + base64.b64encode(b"\0" * 32).decode()
    r = create_with_upload(origin, blob, blob[:100], **{"Upload-Checksum": bad})
    assert r.status_code == 460 and r.json()["error"] == "checksum_mismatch"


def unfinished(o: Origin) -> float:
    for line in o.http.get("/metrics").text.splitlines():
        if line.startswith("edgeproxy_origin_unfinished_uploads "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_creation_whose_body_fails_is_findable_or_not_made(origin: Origin) -> None:
    # Creation-with-upload records the upload before its body arrives: a body that fails must
    # not leave an upload the client cannot name (it took a rate slot and counts on the quota).
    blob = make_blob(50)
    before = unfinished(origin)
    # A Content-Length past Upload-Length is known up front: nothing is created at all.
    r = create_with_upload(origin, blob, blob + b"extra")
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    assert "location" not in r.headers and unfinished(origin) == before

    def chunked() -> Iterator[bytes]:  # too long, but only known once the bytes arrive
        yield blob
        yield b"extra"

    bad = "sha256 " + base64.b64encode(b"\0" * 32).decode()
    failures = [(create_with_upload(origin, blob, blob[:100], **{"Upload-Checksum": bad}), 460),
                (origin.http.post("/v1/tus", content=chunked(), headers={
                    **TUS, "Upload-Length": str(len(blob)), "Upload-Metadata": metadata(blob),
                    "Content-Type": "application/offset+octet-stream"}), 413)]  # fmt: skip
    for r, status in failures:
        assert r.status_code == status, r.text
        url, media_id = r.headers["location"], r.headers["x-media-id"]
        assert r.json()["media_id"] == media_id and r.headers["upload-offset"] == "0"
        h = origin.http.head(target(url), headers=TUS)
        assert h.status_code == 200 and h.headers["upload-offset"] == "0"
    assert unfinished(origin) == before + 2
    # The first one resumes to completion; the second is terminated by the client.
    (first, _), (second, _) = failures
    p = origin.http.patch(target(first.headers["location"]), content=blob, headers={
        **TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    assert p.status_code == 204 and p.headers["upload-offset"] == str(len(blob))
    assert origin.confirm(first.headers["x-media-id"], sha(blob)).status_code == 200
    assert origin.http.delete(target(second.headers["location"]), headers=TUS).status_code == 204
    assert unfinished(origin) == before


def test_tuspy_resumes_an_upload_created_with_data(origin: Origin) -> None:
    blob = make_blob(30_000)
    r = create_with_upload(origin, blob, blob[:65_536])
    assert r.status_code == 201
    uploader = TusClient(origin.url + "/v1/tus", headers=dict(origin.auth("alice"))).uploader(
        file_stream=io.BytesIO(blob), url=r.headers["location"],
        chunk_size=200_000)  # fmt: skip
    assert uploader.offset == 65_536  # tuspy HEADs where the creation left it
    uploader.upload()
    assert origin.confirm(r.json()["media_id"], sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


def node_tus() -> list[str]:
    """The command running tus-js-client; fails (never skips) if it is not installed."""
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "tus-js-client").is_dir():
        pytest.fail("tus-js-client needs Node.js and `npm ci --prefix tests/js` "
                    "(.ci/run does both)")  # fmt: skip
    return [node, str(JS / "tus_upload.mjs")]


@pytest.mark.parametrize("chunk", [10**9, 100_000])  # all in the POST; POST + PATCHes
def test_tus_js_client_uploads_data_during_creation(origin: Origin, tmp_path: Path,
                                                    chunk: int) -> None:  # fmt: skip
    blob = make_blob(16_000)  # 256 KiB
    (tmp_path / "blob").write_bytes(blob)
    token = mint_token(origin.config.auth.jwt_secret, "alice")
    meta = json.dumps({"filetype": "video/mp4", "sha256": sha(blob)})
    result = subprocess.run([*node_tus(), origin.url + "/v1/tus", token, str(tmp_path / "blob"),
                             meta, str(chunk)], capture_output=True, text=True, timeout=60,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert int(out["creationOffset"]) == min(chunk, len(blob))
    media_id = httpx.URL(out["url"]).path.rsplit("/", 1)[1]
    assert origin.confirm(media_id, sha(blob)).status_code == 200
    assert origin.http.get(f"/v/t1/{sha(blob)}").content == blob


# --- upload duration -------------------------------------------------------------------------


@pytest.mark.parametrize(("blob_size", "size_class"), [
    (64, "le_1MiB"),
    (1024**2 + 64, "le_1MiB"),  # 1 MiB of media: the blob carries the format's overhead
    (1024**2 + 1024, "le_10MiB"),
    (100 * 1024**2 + 64, "le_100MiB"),
    (101 * 1024**2, "gt_100MiB"),
])  # fmt: skip
def test_upload_size_class(blob_size: int, size_class: str) -> None:
    assert upload_size_class(blob_size) == size_class


def duration_samples(o: Origin) -> dict[str, float]:
    text = o.http.get("/metrics").text
    return {f"{m.group(1)} {m.group(2)}": float(m.group(3)) for m in re.finditer(
        r'^edgeproxy_origin_upload_duration_seconds_(count|bucket)\{(.*?)\} (\S+)$', text, re.M)}


def test_upload_duration_is_observed_once_per_commit(tmp_path: Path) -> None:
    clock = Clock()
    with run_origin(tmp_path, clock) as o:
        blob = make_blob(100)
        ticket = o.request(blob)
        assert o.http.put(target(ticket["upload_url"]), content=blob).status_code == 200
        clock.now += 7  # a slow upload: past the 5 s target
        assert o.confirm(ticket["media_id"], sha(blob)).status_code == 200
        assert o.confirm(ticket["media_id"], sha(blob)).status_code == 200  # idempotent
        samples = duration_samples(o)
    assert samples['count size_class="le_1MiB"'] == 1
    assert samples['bucket le="5.0",size_class="le_1MiB"'] == 0
    assert samples['bucket le="10.0",size_class="le_1MiB"'] == 1
