"""The client library and the upload/download CLI against a real origin, shield and edge."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from edgeproxy import cache, crypto, origin
from edgeproxy.client import MediaClient, cdn_rewrite
from edgeproxy.config import Config, load_config
from edgeproxy.errors import ClientError, IntegrityError
from edgeproxy.origin.auth import mint_token
from tests.servers import free_port, serve, write_stack_config

PAYLOAD_FIELDS = {"type", "media_id", "media_url", "thumbnail_url", "thumbnail_base64",
                  "media_key", "file_sha256", "file_enc_sha256", "file_length", "mimetype",
                  "chunk_macs", "width", "height", "file_name"}  # fmt: skip


@dataclass
class Nodes:
    config: Config
    origin: str
    shield: str
    edge: str
    tamper: str  # a proxy in front of the origin that corrupts what it relays
    token: str  # a media-API bearer token of user "alice"


def tamper_app(upstream: str) -> Any:
    """Relays GETs to ``upstream``, in the mode named by the first path segment.

    ``/flip/v/t1/..`` flips the byte at blob offset 100_000 (in chunk 1); ``/norange/..`` drops
    the Range header and answers 200 with the whole blob; anything else relays faithfully.
    """

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        mode, _, rest = request.url.path.lstrip("/").partition("/")
        headers = {}
        if "range" in request.headers and mode != "norange":
            headers["range"] = request.headers["range"]
        async with httpx.AsyncClient(trust_env=False) as client:
            upstream_resp = await client.get(f"{upstream}/{rest}", headers=headers)
        body = bytearray(upstream_resp.content)
        # The byte at blob offset 100_000, wherever the (possibly partial) body starts.
        content_range = upstream_resp.headers.get("content-range", "bytes 0-")
        at = 100_000 - int(content_range.split()[1].split("-")[0])
        if mode == "flip" and 0 <= at < len(body):
            body[at] ^= 0x01
        keep = {k: v for k, v in upstream_resp.headers.items()
                if k.lower() in ("content-range", "x-cache", "content-type")}  # fmt: skip
        await Response(bytes(body), upstream_resp.status_code, keep)(scope, receive, send)

    return app


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    tmp = tmp_path_factory.mktemp("stack")
    path, ports = write_stack_config(tmp)
    config = load_config(path, env={})
    with (serve(origin.create_app(config), ports["origin"]) as o,
          serve(cache.create_app(config, "shield"), ports["shield"]) as s,
          serve(cache.create_app(config, "edge"), ports["edge"]) as e,
          serve(tamper_app(o.url)) as t):  # fmt: skip
        yield Nodes(config, o.url, s.url, e.url, t.url,
                    mint_token(config.auth.jwt_secret, "alice"))


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 400x300 noisy PNG: ~350 KiB, so its blob spans six 64 KiB chunks."""
    path = tmp_path_factory.mktemp("media") / "photo.png"
    Image.frombytes("RGB", (400, 300), os.urandom(400 * 300 * 3)).save(path)
    return path


@pytest.fixture(scope="module")
def uploaded(nodes: Nodes, image: Path) -> dict[str, Any]:
    with MediaClient(nodes.origin, token=nodes.token) as client:
        return client.upload(image)


def test_upload_returns_the_message_payload(uploaded: dict[str, Any], nodes: Nodes,
                                            image: Path) -> None:  # fmt: skip
    p, data = uploaded, image.read_bytes()
    assert set(p) == PAYLOAD_FIELDS
    assert p["type"] == "image" and p["mimetype"] == "image/png"
    assert p["file_name"] == image.name  # for the receiver; the origin never sees it
    assert (p["width"], p["height"]) == (400, 300)
    assert p["file_sha256"] == hashlib.sha256(data).hexdigest()
    assert p["file_length"] == len(data)
    assert p["media_url"] == f"{nodes.edge}/v/t1/{p['file_enc_sha256']}"
    assert p["thumbnail_url"] == p["media_url"] + "/thumb"
    assert p["media_id"].startswith("m_")
    assert len(base64.b64decode(p["media_key"])) == 32
    n_chunks = -(-crypto.enc_length(len(data)) // crypto.CHUNK_SIZE)
    assert len(base64.b64decode(p["chunk_macs"])) == n_chunks * crypto.CHUNK_MAC_SIZE
    prefix = "data:image/jpeg;base64,"
    assert p["thumbnail_base64"].startswith(prefix)
    thumb = Image.open(io.BytesIO(base64.b64decode(p["thumbnail_base64"][len(prefix):])))
    assert thumb.format == "JPEG" and max(thumb.size) <= 64
    # The origin holds the encrypted blob, whose hash is the one in the payload.
    blob = httpx.get(cdn_rewrite(p["media_url"], nodes.origin), trust_env=False)
    assert blob.status_code == 200
    assert hashlib.sha256(blob.content).hexdigest() == p["file_enc_sha256"]
    assert data not in blob.content and blob.content[:8] == crypto.MAGIC
    # The uploaded thumbnail is the inline JPEG, encrypted with the same key.
    enc_thumb = httpx.get(cdn_rewrite(p["thumbnail_url"], nodes.origin), trust_env=False)
    key = base64.b64decode(p["media_key"])
    assert crypto.decrypt_bytes(enc_thumb.content, key, "thumbnail") == base64.b64decode(
        p["thumbnail_base64"][len(prefix):])


def test_whole_and_ranged_download_from_the_origin(
    uploaded: dict[str, Any], nodes: Nodes, image: Path, tmp_path: Path
) -> None:
    data = image.read_bytes()
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.origin) as client:
        result = client.download(uploaded, tmp_path / "whole.png")
        assert (tmp_path / "whole.png").read_bytes() == data
        assert result.status == 200 and result.bytes_written == len(data)
        assert result.bytes_fetched == crypto.enc_length(len(data))
        assert result.url.startswith(nodes.origin + "/v/t1/")
        cases = [(1000, 99999), (0, 0), (65535, 65536), (len(data) - 5, len(data) - 1),
                 (len(data) - 70000, len(data) + 500)]  # fmt: skip
        for start, end in cases:
            out = tmp_path / f"r{start}.bin"
            result = client.download(uploaded, out, byte_range=(start, end))
            assert out.read_bytes() == data[start : end + 1], (start, end)
            assert result.status == 206
            plan = crypto.plan_range(start, min(end, len(data) - 1), len(data))
            assert result.bytes_fetched == plan.blob_end - plan.blob_start + 1
            assert result.bytes_fetched < len(data) // 2
        with pytest.raises(ValueError, match="outside the file"):
            client.download(uploaded, tmp_path / "x", byte_range=(len(data), len(data) + 1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_download_through_edge_and_shield(uploaded: dict[str, Any], nodes: Nodes,
                                          image: Path, tmp_path: Path) -> None:  # fmt: skip
    data = image.read_bytes()
    with MediaClient(nodes.origin, token=nodes.token) as client:  # media_url already names the edge
        first = client.download(uploaded, tmp_path / "a.png")
        second = client.download(uploaded, tmp_path / "b.png")
        ranged = client.download(uploaded, tmp_path / "r.bin", byte_range=(1000, 99999))
    assert (tmp_path / "a.png").read_bytes() == data == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "r.bin").read_bytes() == data[1000:100000]
    assert first.x_cache is not None and first.x_cache.startswith("MISS from edge")
    assert second.x_cache is not None and second.x_cache.startswith("HIT from edge")
    assert ranged.status == 206 and ranged.x_cache is not None
    assert ranged.x_cache.startswith("HIT from edge")


def test_tampered_blob_is_rejected_and_nothing_is_written(
    uploaded: dict[str, Any], nodes: Nodes, tmp_path: Path
) -> None:
    out = tmp_path / "out.png"
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.tamper + "/flip") as client:
        with pytest.raises(IntegrityError):
            client.download(uploaded, out)
        assert list(tmp_path.iterdir()) == []
        # 100_000 lies in chunk 1; a range over chunks 1-2 must fail its chunk MAC.
        with pytest.raises(IntegrityError, match="chunk 1"):
            client.download(uploaded, out, byte_range=(70_000, 140_000))
        assert list(tmp_path.iterdir()) == []
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.tamper + "/relay") as client:
        # The relay itself is honest: the same download through it succeeds.
        assert client.download(uploaded, out).bytes_written == uploaded["file_length"]


def test_payload_that_does_not_match_the_blob(uploaded: dict[str, Any], nodes: Nodes,
                                              tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "out.png"
    wrong_plain = {**uploaded, "file_sha256": "0" * 64}
    wrong_key = {**uploaded, "media_key": base64.b64encode(bytes(32)).decode()}
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.origin) as client:
        for payload in (wrong_plain, wrong_key):
            with pytest.raises(IntegrityError):
                client.download(payload, out)
        with pytest.raises(IntegrityError):
            client.download(wrong_key, out, byte_range=(0, 10))
    assert list(tmp_path.iterdir()) == []


def test_range_must_be_honoured(uploaded: dict[str, Any], nodes: Nodes, tmp_path: Path) -> None:
    with (MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.tamper + "/norange") as client,
          pytest.raises(ClientError, match="206") as info):  # fmt: skip
        client.download(uploaded, tmp_path / "x", byte_range=(0, 10))
    assert info.value.status == 200
    assert list(tmp_path.iterdir()) == []


def test_api_errors_become_client_errors(nodes: Nodes, tmp_path: Path, image: Path) -> None:
    with MediaClient(nodes.origin, token=nodes.token) as client, pytest.raises(ClientError) as info:
        client.upload(image, mimetype="not a mime type")
    assert (info.value.status, info.value.error) == (422, "invalid_field")
    with (MediaClient(f"http://127.0.0.1:{free_port()}") as client,
          pytest.raises(ClientError) as info):  # fmt: skip
        client.upload(image)
    assert (info.value.status, info.value.error) == (0, "connection_failed")
    missing = {"media_url": f"{nodes.edge}/v/t1/{'ab' * 32}", "media_key": "A" * 44,
               "type": "document", "file_sha256": "0" * 64, "file_length": 5}  # fmt: skip
    with MediaClient(nodes.origin, token=nodes.token) as client, pytest.raises(ClientError) as info:
        client.download(missing, tmp_path / "x")
    assert info.value.status == 404
    assert list(tmp_path.iterdir()) == []


def test_non_image_upload_has_no_thumbnail(nodes: Nodes, tmp_path: Path) -> None:
    src = tmp_path / "notes.zip"
    src.write_bytes(os.urandom(70_000))
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.origin) as client:
        p = client.upload(src)
        assert (p["type"], p["mimetype"]) == ("archive", "application/zip")
        assert p["thumbnail_base64"] is None and p["thumbnail_url"] is None
        assert "width" not in p and "duration" not in p and "page_count" not in p
        client.download(p, tmp_path / "copy.bin")
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()


# --- the CLI, as a user runs it -------------------------------------------------------------


def cli(*args: str, cwd: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "edgeproxy", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_cli_upload_and_download(nodes: Nodes, image: Path, tmp_path: Path) -> None:
    data = image.read_bytes()
    # Without --api, the origin named by the config is used.
    config_file = str(nodes.config.data_dir.parent / "config.yaml")
    proc = cli("upload", str(image), "--config", config_file, "--out", "payload.json",
               cwd=tmp_path, EDGEPROXY_TOKEN=nodes.token)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    payload = json.loads(proc.stdout)
    assert set(payload) == PAYLOAD_FIELDS
    assert json.loads((tmp_path / "payload.json").read_text()) == payload
    assert payload["file_sha256"] == hashlib.sha256(data).hexdigest()
    assert payload["media_url"].startswith(nodes.edge)

    proc = cli("download", "payload.json", "--out", "whole.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "whole.png").read_bytes() == data
    summary = json.loads(proc.stdout)
    assert summary["bytes"] == len(data) and summary["x_cache"].startswith("MISS from edge")

    proc = cli("download", "payload.json", "--out", "part.bin", "--range", "1000-99999",
               "--cdn", nodes.origin, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "part.bin").read_bytes() == data[1000:100000]
    summary = json.loads(proc.stdout)
    assert (summary["bytes"], summary["status"]) == (99000, 206)
    assert summary["url"].startswith(nodes.origin)


def test_cli_errors_are_one_line(nodes: Nodes, uploaded: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(uploaded))
    proc = cli("download", "p.json", "--out", "x.png", "--cdn", nodes.tamper + "/flip",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgeproxy: error: ") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]

    proc = cli("download", "p.json", "--out", "x.png", "--range", "9-1", cwd=tmp_path)
    assert proc.returncode == 2 and "START-END" in proc.stderr
    proc = cli("download", "p.json", "--out", "x.png", "--range", "\u00b2-3", cwd=tmp_path)
    assert proc.returncode == 2 and "START-END" in proc.stderr and "Traceback" not in proc.stderr
    for out, said in (("", "needs a file name"), (".", "is a directory")):
        proc = cli("download", "p.json", "--out", out, cwd=tmp_path)
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]

    (tmp_path / "bad.json").write_text("{not json")
    proc = cli("download", "bad.json", "--out", "x.png", cwd=tmp_path)
    assert proc.returncode == 1 and "not JSON" in proc.stderr

    proc = cli("upload", str(tmp_path / "p.json"), "--api", nodes.origin, "--type", "nope",
               "--token", nodes.token, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "422 invalid_field" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = cli("upload", str(tmp_path / "p.json"), "--api", nodes.origin, "--type", "image/png",
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "401 unauthorized" in proc.stderr
    assert "edgeproxy token --user" in proc.stderr and "Traceback" not in proc.stderr


def test_a_download_writes_a_file_of_its_own_before_moving_it_into_place(
        uploaded: dict[str, Any], nodes: Nodes, tmp_path: Path) -> None:
    """A fixed ``<out>.part`` was truncated by a second download to the same place (one of two
    concurrent downloads reported success over mixed plaintext, found from outside), and a
    user's own file of that name was deleted by a failed download."""
    out = tmp_path / "movie"
    mine = tmp_path / "movie.part"
    mine.write_bytes(b"the user's own")
    wrong_key = {**uploaded, "media_key": base64.b64encode(bytes(32)).decode()}
    other_file = tmp_path / "other.pdf"
    other_file.write_bytes(b"%PDF-1.4\n" + os.urandom(300_000))
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.origin) as client:
        with pytest.raises(IntegrityError):
            client.download(wrong_key, out)
        with pytest.raises(IntegrityError):
            client.download(wrong_key, out, byte_range=(0, 10))
        assert mine.read_bytes() == b"the user's own" and not out.exists()
        other = client.upload(other_file, mimetype="application/pdf")
    plains = {uploaded["file_sha256"], other["file_sha256"]}
    errors: list[BaseException] = []

    def fetch(payload: dict[str, Any]) -> None:
        try:
            with MediaClient(nodes.origin, cdn_url=nodes.origin) as c:
                c.download(payload, out)
        except BaseException as exc:
            errors.append(exc)

    for _ in range(4):  # two downloads of different media to one place, at once
        threads = [threading.Thread(target=fetch, args=(p,)) for p in (uploaded, other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert hashlib.sha256(out.read_bytes()).hexdigest() in plains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["movie", "movie.part", "other.pdf"]


@pytest.mark.parametrize(("change", "complaint"), [
    ({"file_enc_sha256": 123}, "'file_enc_sha256' is not a hex SHA-256"),
    ({"file_sha256": "é" * 64}, "'file_sha256' is not a hex SHA-256"),
    ({"type": None, "mimetype": None}, "neither 'type' nor 'mimetype'"),
])  # fmt: skip
def test_a_malformed_payload_field_is_one_line_not_a_traceback(
        uploaded: dict[str, Any], tmp_path: Path, change: dict[str, Any],
        complaint: str) -> None:  # fmt: skip
    payload = {k: v for k, v in {**uploaded, **change}.items() if v is not None}
    (tmp_path / "p.json").write_text(json.dumps(payload))
    proc = cli("download", "p.json", "--out", "x.png", cwd=tmp_path)
    assert proc.returncode == 1 and complaint in proc.stderr, proc.stderr
    assert proc.stderr.startswith("edgeproxy: error: ") and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_a_token_with_a_line_break_is_refused_without_echoing_it(image: Path,
                                                                  tmp_path: Path) -> None:
    """httpx refused such a token as an illegal header, which printed the whole token and
    blamed the connection (found from outside)."""
    secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"
    proc = cli("upload", str(image), "--api", f"http://127.0.0.1:{free_port()}",
               cwd=tmp_path, EDGEPROXY_TOKEN=secret[:20] + "\n" + secret[20:])
    assert proc.returncode == 1 and "control character" in proc.stderr, proc.stderr
    assert secret[:20] not in proc.stderr and "Traceback" not in proc.stderr


def test_upload_out_into_a_missing_directory_fails_before_uploading(image: Path,
                                                                   tmp_path: Path) -> None:
    """The payload holds the only copy of the media key: an upload whose --out could not be
    written printed nothing (the blob stored, never to be decrypted). The directory is checked
    first (here no origin listens at all: the check comes before any request)."""
    proc = cli("upload", str(image), "--api", f"http://127.0.0.1:{free_port()}",
               "--token", "x", "--out", str(tmp_path / "missing" / "payload.json"),
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "no directory" in proc.stderr, proc.stderr


# --- client-side media facts -----------------------------------------------------------------


def _flac(seconds: float, rate: int = 44100) -> bytes:
    """A FLAC stream header (STREAMINFO only): enough for a reader to know the duration."""
    import struct

    bits = (rate << 44) | (1 << 41) | (15 << 36) | int(seconds * rate)
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + bits.to_bytes(8, "big") + bytes(16)
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def _wav(seconds: int, rate: int = 8000) -> bytes:
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(rate * 2 * seconds))
    return out.getvalue()


def _pdf(pages: int) -> bytes:
    from pypdf import PdfWriter

    writer, out = PdfWriter(), io.BytesIO()
    for _ in range(pages):
        writer.add_blank_page(200, 200)
    writer.write(out)
    return out.getvalue()


def _noise(size: int) -> bytes:
    return hashlib.shake_256(b"noise %d" % size).digest(size)


def _mp4(seconds: int, width: int, height: int) -> bytes:
    from tests.test_progressive import mp4_header

    return mp4_header(seconds, width, height, 8 + 1000) + os.urandom(1000)


@pytest.mark.parametrize(
    ("name", "mimetype", "data", "facts"),
    [
        ("a.flac", "audio/flac", _flac(5.5), {"duration": 5.5}),
        ("a.wav", "audio/wav", _wav(3), {"duration": 3.0}),
        ("v.mp4", "video/mp4", _mp4(90, 1280, 720), {"duration": 90, "width": 1280,
                                                     "height": 720}),
        ("d.pdf", "application/pdf", _pdf(3), {"page_count": 3}),
        # (fixed noise: random bytes hold an MP3 frame sync now and then, and a test that
        # passes or fails by the draw says nothing)
        ("noise.mp3", "audio/mpeg", _noise(5000), {}),
        ("noise.pdf", "application/pdf", _noise(5000), {}),
        ("noise.mp4", "video/mp4", b"\0\0\0\x10ftypisom" + _noise(5000), {}),
        ("noise.png", "image/png", _noise(5000), {}),
        ("a.zip", "application/zip", _noise(100), {}),
    ],
)  # fmt: skip
def test_media_facts(tmp_path: Path, name: str, mimetype: str, data: bytes,
                     facts: dict[str, Any]) -> None:  # fmt: skip
    from edgeproxy.client.mediafacts import media_facts

    path = tmp_path / name
    path.write_bytes(data)
    assert media_facts(path, mimetype) == facts


def test_media_facts_ride_in_the_payload_only(nodes: Nodes, tmp_path: Path) -> None:
    src = tmp_path / "report.pdf"
    src.write_bytes(_pdf(4))
    sent: list[bytes] = []
    with MediaClient(nodes.origin, token=nodes.token, cdn_url=nodes.origin) as client:
        client.http.event_hooks["request"] = [lambda r: sent.append(r.read())]
        p = client.upload(src, conversation_id="conv_42")
        assert p["page_count"] == 4 and p["type"] == "document"
        assert p["file_name"] == "report.pdf"
        client.download(p, tmp_path / "copy.pdf")
    assert (tmp_path / "copy.pdf").read_bytes() == src.read_bytes()
    request = json.loads(sent[0])
    assert request["conversation_id"] == "conv_42" and request["file_type"] == "application/pdf"
    assert set(request) == {"file_size", "file_type", "file_hash", "conversation_id"}
    assert not any(b"page_count" in body or b"report.pdf" in body for body in sent)


def test_a_signed_url_is_shown_without_its_signature() -> None:
    from edgeproxy.client.responses import unsigned

    url = "https://cdn.example/v1/upload/m_abc?expires=1&size=2&sig=deadbeef"
    assert unsigned(url) == "https://cdn.example/v1/upload/m_abc"
    assert unsigned("https://cdn.example/v1/upload/m_abc") == "https://cdn.example/v1/upload/m_abc"


@pytest.mark.parametrize("where", ["media_url", "--api", "--cdn"])
def test_a_url_that_cannot_be_one_is_one_line_not_a_traceback(
        uploaded: dict[str, Any], image: Path, tmp_path: Path, where: str) -> None:
    """httpx refuses ``http://[::1`` (no closing bracket) with `httpx.InvalidURL`, which no
    transport error is: the CLI died with its traceback (found from outside)."""
    bad = "http://[::1"
    if where == "--api":
        proc = cli("upload", str(image), "--api", bad, "--token", "x", cwd=tmp_path)
    else:
        payload = dict(uploaded)
        if where == "media_url":
            payload["media_url"] = bad + "/v/t1/" + "a" * 64
        (tmp_path / "p.json").write_text(json.dumps(payload))
        extra = ["--cdn", bad] if where == "--cdn" else []
        proc = cli("download", "p.json", "--out", "x.png", *extra, cwd=tmp_path)
    assert proc.stderr.startswith("edgeproxy: error: ") and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    if where != "--cdn":  # (that one was a one-line "Invalid IPv6 URL" already)
        assert proc.returncode == 2 and "not a usable URL" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_a_client_error_with_no_answer_shows_no_status() -> None:
    """No answer came (status 0): the message says why, with no HTTP status "0" in front
    (the CLI printed "0 upload_failed: ...")."""
    assert str(ClientError(0, "upload_failed", "gave up")) == "upload_failed: gave up"
    assert str(ClientError(503, "database_unavailable", "away")) == \
        "503 database_unavailable: away"
